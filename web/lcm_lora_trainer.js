// LCM-LoRA trainer panel (ComfyUI web extension, /extensions/<pack>/lcm_lora_trainer.js).
//
// A sidebar tab (app.extensionManager.registerSidebarTab; older front ends get a floating
// dialog) that starts the pack's headless trainer in a background process through the
// /lcm_lora/train/... routes (nodes/trainer_routes.py), shows the live loss curve (polling the
// events.jsonl feed), the validation grids and the log tail, and cancels a run (the trainer saves a
// checkpoint). The finished adapter lands in ComfyUI's loras folder; the LoRA lists are refreshed.
// Also in the menu: Extensions → LCM-LoRA Trainer. window.LCMLoRATrainer exposes open()/state for tests.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const TAB_ID = "lcm-lora-trainer";
const ROUTE = "/lcm_lora/train";
const POLL_MS = 1500;
// the overrides the form shows (the routes accept every one GET /options lists)
const FORM_OVERRIDES = [
  ["max_steps", "max steps", 1],
  ["learning_rate", "learning rate", "any"],
  ["rank", "LoRA rank", 1],
  ["batch_size", "batch size", 1],
  ["resolution", "resolution (px)", 8],
  ["validation_every", "validate every", 1],
  ["checkpoint_every", "checkpoint every", 1],
  ["normal_cfg", "recommended cfg", "any"],
];
// shown (and sent) only for configs with lcd.solver_guidance false, PCM's "normal CFG" recipe (GET /options
// lists them in normal_cfg_configs with their cfg): the cfg the adapter's metadata recommends
const NORMAL_CFG_ONLY = new Set(["normal_cfg"]);

const state = { options: null, jobs: [], jobId: null, job: null, events: [], next: 0, error: "", timer: null, root: null, images: [] };

async function call(path, opts = {}) {
  const init = { ...opts };
  if (opts.body !== undefined) {
    init.method = opts.method ?? "POST";
    init.headers = { "Content-Type": "application/json" };
    init.body = JSON.stringify(opts.body);
  }
  const r = await api.fetchApi(ROUTE + path, init);
  let data = null;
  try { data = await r.json(); } catch { data = null; }
  if (!r.ok) throw new Error(data?.error ?? `${r.status} ${r.statusText}`);
  return data;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "style") Object.assign(node.style, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

const css = `
.lcm-trainer { padding: 8px 10px; font-size: 13px; color: var(--fg-color, #ddd); display: flex; flex-direction: column; gap: 8px; overflow-y: auto; height: 100%; box-sizing: border-box; }
.lcm-trainer h3 { margin: 4px 0; font-size: 14px; }
.lcm-trainer label { display: grid; grid-template-columns: 110px 1fr; align-items: center; gap: 6px; }
.lcm-trainer select, .lcm-trainer input, .lcm-trainer textarea { background: var(--comfy-input-bg, #222); color: inherit; border: 1px solid var(--border-color, #444); border-radius: 4px; padding: 3px 5px; min-width: 0; }
.lcm-trainer .job > select { width: 100%; }
.lcm-trainer textarea { width: 100%; box-sizing: border-box; min-height: 48px; }
.lcm-trainer .row { display: flex; gap: 6px; align-items: center; flex-wrap: wrap; }
.lcm-trainer button { background: var(--comfy-menu-bg, #333); color: inherit; border: 1px solid var(--border-color, #555); border-radius: 4px; padding: 4px 10px; cursor: pointer; }
.lcm-trainer button:disabled { opacity: .5; cursor: default; }
.lcm-trainer .error { color: #f66; white-space: pre-wrap; }
.lcm-trainer .status { font-weight: bold; }
.lcm-trainer canvas { width: 100%; height: 150px; background: rgba(0,0,0,.25); border-radius: 4px; }
.lcm-trainer .images { display: flex; flex-direction: column; gap: 4px; }
.lcm-trainer .images img { image-rendering: pixelated; width: 100%; max-width: 320px; border: 1px solid var(--border-color, #444); }
.lcm-trainer pre { max-height: 120px; overflow: auto; font-size: 11px; background: rgba(0,0,0,.25); padding: 4px; margin: 0; white-space: pre-wrap; }
.lcm-trainer fieldset { border: 1px solid var(--border-color, #444); border-radius: 4px; padding: 6px; display: flex; flex-direction: column; gap: 4px; }
.lcm-trainer-dialog { position: fixed; right: 16px; top: 56px; width: 380px; max-height: 85vh; z-index: 1000; background: var(--comfy-menu-bg, #222); border: 1px solid var(--border-color, #555); border-radius: 6px; box-shadow: 0 4px 20px rgba(0,0,0,.5); }
`;

function ensureStyle() {
  if (document.getElementById("lcm-trainer-style")) return;
  document.head.append(el("style", { id: "lcm-trainer-style" }, css));
}

// -- loss chart ------------------------------------------------------------------------------
function drawChart(canvas, points) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 300, h = canvas.clientHeight || 150;
  canvas.width = w * dpr; canvas.height = h * dpr;
  const ctx = canvas.getContext("2d");
  ctx.scale(dpr, dpr);
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = "#aaa"; ctx.font = "11px sans-serif";
  if (!points.length) { ctx.fillText("loss: waiting for the first step…", 10, h / 2); return; }
  const pad = { l: 46, r: 8, t: 8, b: 18 };
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y1 - y0 < 1e-12) { y0 -= 0.5 * Math.abs(y0 || 1); y1 += 0.5 * Math.abs(y1 || 1); }
  const X = (x) => pad.l + (x - x0) / (x1 - x0) * (w - pad.l - pad.r);
  const Y = (y) => pad.t + (1 - (y - y0) / (y1 - y0)) * (h - pad.t - pad.b);
  ctx.strokeStyle = "#555"; ctx.beginPath(); ctx.moveTo(pad.l, pad.t); ctx.lineTo(pad.l, h - pad.b); ctx.lineTo(w - pad.r, h - pad.b); ctx.stroke();
  ctx.fillText(y1.toPrecision(3), 2, pad.t + 8); ctx.fillText(y0.toPrecision(3), 2, h - pad.b);
  ctx.fillText(`step ${x0}`, pad.l, h - 4); const last = `step ${x1}`; ctx.fillText(last, w - pad.r - ctx.measureText(last).width, h - 4);
  const line = (pts, color, width) => {
    ctx.strokeStyle = color; ctx.lineWidth = width; ctx.beginPath();
    pts.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
    ctx.stroke();
  };
  line(points, "rgba(120,170,255,.55)", 1);
  let ema = 0; // exponential moving average with TensorBoard's debiasing (divide by 1 - 0.9^n)
  line(points.map(([x, y], i) => [x, (ema = 0.9 * ema + 0.1 * y) / (1 - 0.9 ** (i + 1))]), "#ffb347", 2);
}

// -- rendering -------------------------------------------------------------------------------
function formView() {
  const o = state.options;
  const teacherOpts = (o?.teachers ?? []).map((t) => el("option", { value: `${t.type}|${t.name}` }, `${t.name}${t.type === "diffusers" ? " (diffusers)" : ""}`));
  // bounds and meaning come from the trainer's config schema (training/config_schema.py, fields marked panel=)
  const schema = o?.overrides ?? {};
  const overrides = FORM_OVERRIDES.filter(([key]) => !o || key in schema).map(([key, label, step]) => {
    const spec = schema[key] ?? {};
    return el("label", { title: [spec.key, spec.doc].filter(Boolean).join(": ") || null }, label,
      el("input", { type: "number", "data-override": key, step, min: spec.min, max: spec.max, placeholder: "config default" }));
  });
  const mode = el("select", { "data-field": "mode", onchange: (e) => {
    state.root.querySelector("[data-field=data]").parentElement.style.display = e.target.value === "data" ? "" : "none";
    state.root.querySelector("[data-field=prompts]").parentElement.style.display = e.target.value === "prompts" ? "" : "none";
  } }, el("option", { value: "data" }, "image folder (ComfyUI input/)"), el("option", { value: "prompts" }, "prompts only"));
  const form = el("fieldset", {},
    el("label", {}, "config", el("select", { "data-field": "config", onchange: (e) => syncConfigFields(e.target.closest("fieldset")) },
      (o?.configs ?? []).map((c) => el("option", { value: c }, c)))),
    el("label", {}, "teacher", el("select", { "data-field": "teacher" }, teacherOpts)),
    el("label", {}, "training data", mode),
    el("label", {}, "data folder", el("select", { "data-field": "data" }, (o?.data_folders ?? []).map((d) => el("option", { value: d }, d)))),
    el("label", { style: { display: "none" } }, "prompts", el("textarea", { "data-field": "prompts", placeholder: "one prompt per line" })),
    el("label", {}, "LoRA name", el("input", { "data-field": "output_name", value: "my_lcm_lora" })),
    overrides,
    el("div", { class: "row" }, el("button", { "data-action": "start", onclick: startJob }, "Start training"),
      el("button", { onclick: refreshOptions, title: "re-read configs, models and folders" }, "↻")),
  );
  syncConfigFields(form);
  return form;
}

// Fields that belong to some configs only (normal_cfg: configs with lcd.solver_guidance false) are shown and
// enabled for those; hidden ones keep what was typed but are not sent (readForm skips disabled inputs), so a
// guided config never gets the key (the trainer refuses it there) and runs as shipped. The placeholder is the
// chosen config's value (empty = that value).
function syncConfigFields(form) {
  const config = form.querySelector("[data-field=config]")?.value;
  const cfgs = state.options?.normal_cfg_configs ?? {};
  for (const input of form.querySelectorAll("[data-override]")) {
    if (!NORMAL_CFG_ONLY.has(input.dataset.override)) continue;
    const on = Object.hasOwn(cfgs, config ?? "");
    input.disabled = !on;
    input.parentElement.style.display = on ? "" : "none";
    input.placeholder = on ? `config: ${cfgs[config]}` : "normal-CFG configs only";
  }
}

function readForm() {
  const q = (f) => state.root.querySelector(`[data-field=${f}]`);
  const [teacherType, ...rest] = (q("teacher").value || "|").split("|");
  const body = { config: q("config").value, teacher: rest.join("|"), teacher_type: teacherType, output_name: q("output_name").value.trim() };
  if (q("mode").value === "data") body.data = q("data").value;
  else body.prompts = q("prompts").value.split("\n").map((s) => s.trim()).filter(Boolean);
  const overrides = {};
  for (const input of state.root.querySelectorAll("[data-override]")) {
    if (input.value === "" || input.disabled) continue; // empty: the config's value; disabled: not for this config
    overrides[input.dataset.override] = Number(input.value);
  }
  body.overrides = overrides;
  return body;
}

function jobView() {
  const job = state.job;
  const jobs = el("select", { "data-field": "job", onchange: (e) => selectJob(e.target.value) },
    state.jobs.map((j) => el("option", { value: j.id, selected: j.id === state.jobId ? "" : null }, `${j.id} — ${j.status}`)));
  const box = el("div", { class: "job" }, el("h3", {}, "Jobs"), jobs);
  if (!job) return box;
  const running = job.status === "running" || job.status === "cancelling";
  const progress = job.max_steps ? `step ${job.step}/${job.max_steps}` : `step ${job.step}`;
  const loss = job.loss == null ? "" : ` · loss ${Number(job.loss).toPrecision(4)}`;
  const eta = running && job.eta_s != null ? ` · ETA ${Math.round(job.eta_s)} s` : "";
  box.append(
    el("div", { class: "row" }, el("span", { class: "status", "data-status": job.status }, job.status),
      el("span", {}, ` ${job.phase} · ${progress}${loss}${eta}`)),
    job.message ? el("div", {}, job.message) : "",
    el("canvas", { "data-chart": "loss" }),
    el("div", { class: "row" }, el("button", { "data-action": "cancel", disabled: running && job.status !== "cancelling" ? null : "", onclick: cancelJob }, "Cancel")),
  );
  if (job.images?.length) {
    const last = job.images[job.images.length - 1];
    box.append(el("h3", {}, `Validation (${last.replace(/^step-0*/, "step ").replace(".png", "")}; rows = LCM steps)`),
      el("div", { class: "images" }, el("img", { "data-image": last, src: api.apiURL(`${ROUTE}/jobs/${job.id}/images/${last}`), alt: last })));
  }
  if (job.log_tail) box.append(el("pre", {}, job.log_tail.split("\n").slice(-12).join("\n")));
  return box;
}

function render() {
  if (!state.root) return;
  const keep = state.root.querySelector("fieldset"); // the form is kept as is: what the user typed survives polls
  state.root.replaceChildren(
    el("h3", {}, "LCM-LoRA Trainer"),
    keep ?? formView(),
    state.error ? el("div", { class: "error", "data-error": "" }, state.error) : "",
    jobView(),
  );
  const canvas = state.root.querySelector("canvas[data-chart]");
  if (canvas) {
    const steps = state.events.filter((e) => e.event === "step" && Number.isFinite(e.loss));
    const every = Math.ceil(steps.length / 2000); // long runs: at most ~2000 points per redraw
    drawChart(canvas, steps.filter((e, i) => i % every === 0 || i === steps.length - 1).map((e) => [e.step, e.loss]));
  }
}

// -- actions ---------------------------------------------------------------------------------
async function refreshOptions() {
  try {
    state.options = await call("/options");
    const old = state.root?.querySelector("fieldset");
    if (old) old.replaceWith(formView());
    state.error = "";
  } catch (e) { state.error = String(e.message ?? e); }
  render();
}

// Jobs known to be done. A done job not in here finished since the page first listed the jobs — perhaps while the
// panel was closed and nothing polled — so the loaders' lists are refreshed once for it: its LoRA appears there.
const knownDone = { ids: null };

function noteDone(jobs) {
  const done = jobs.filter((j) => j.status === "done").map((j) => j.id);
  if (knownDone.ids === null) { knownDone.ids = new Set(done); return; } // the first list: nothing new yet
  const fresh = done.filter((id) => !knownDone.ids.has(id));
  for (const id of fresh) knownDone.ids.add(id);
  if (fresh.length) app.refreshComboInNodes?.();
}

async function refreshJobs() {
  try {
    state.jobs = (await call("/jobs")).jobs;
    noteDone(state.jobs);
    if (!state.jobId && state.jobs.length) state.jobId = state.jobs[0].id;
  } catch (e) { state.error = String(e.message ?? e); }
}

async function poll() {
  const id = state.jobId;
  if (!id) return;
  state.polling = true;
  try {
    const job = await call(`/jobs/${id}`);
    if (state.jobId !== id) return; // another job was selected meanwhile: its own poll fills the view
    state.job = job;
    for (;;) {
      const r = await call(`/jobs/${id}/events?since=${state.next}`);
      if (state.jobId !== id) return;
      state.events.push(...r.events);
      state.next = r.next;
      if (r.next >= r.total) break;
    }
    const i = state.jobs.findIndex((j) => j.id === job.id);
    if (i >= 0) state.jobs[i] = job;
    if (job.status === "done") { // the new LoRA in every loader
      knownDone.ids ??= new Set();
      noteDone([job]);
    }
  } catch (e) { state.error = String(e.message ?? e); } finally { state.polling = false; }
  render();
}

function schedule() {
  clearInterval(state.timer);
  state.timer = setInterval(() => {
    if (!state.root?.isConnected || state.polling) return; // one poll at a time
    if (state.job && !["running", "cancelling"].includes(state.job.status)) return;
    poll();
  }, POLL_MS);
}

async function selectJob(id) {
  state.jobId = id; state.job = null; state.events = []; state.next = 0;
  await poll();
}

async function startJob() {
  state.error = "";
  try {
    const job = await call("/jobs", { body: readForm() });
    await refreshJobs();
    await selectJob(job.id);
  } catch (e) { state.error = String(e.message ?? e); render(); }
}

async function cancelJob() {
  if (!state.jobId) return;
  try { state.job = await call(`/jobs/${state.jobId}/cancel`, { body: {} }); } catch (e) { state.error = String(e.message ?? e); }
  render();
}

async function mount(container) {
  ensureStyle();
  state.root = el("div", { class: "lcm-trainer", "data-lcm-trainer": "" });
  container.replaceChildren(state.root);
  render();
  await refreshOptions();
  await refreshJobs();
  if (state.jobId) await selectJob(state.jobId);
  schedule();
}

// -- host: sidebar tab, else a floating dialog -------------------------------------------------
let dialog = null;
function openPanel() {
  const sidebar = app.extensionManager?.sidebarTab;
  if (sidebar?.toggleSidebarTab && app.extensionManager.getSidebarTabs?.().some((t) => t.id === TAB_ID)) {
    if (sidebar.activeSidebarTabId !== TAB_ID) sidebar.toggleSidebarTab(TAB_ID);
    return;
  }
  if (!dialog) {
    dialog = el("div", { class: "lcm-trainer-dialog" },
      el("div", { class: "row", style: { justifyContent: "flex-end", padding: "4px" } },
        el("button", { onclick: () => { dialog.style.display = "none"; } }, "×")),
      el("div", { "data-host": "" }));
    document.body.append(dialog);
    mount(dialog.querySelector("[data-host]"));
  }
  dialog.style.display = "";
}

app.registerExtension({
  name: "lcm_lora.trainer",
  commands: [{ id: "LCMLoRA.Trainer.Open", label: "LCM-LoRA Trainer", icon: "pi pi-bolt", function: openPanel }],
  menuCommands: [{ path: ["Extensions"], commands: ["LCMLoRA.Trainer.Open"] }],
  async setup() {
    call("/jobs").then((r) => noteDone(r.jobs)).catch(() => {}); // the jobs done when the page loaded its lists
    if (app.extensionManager?.registerSidebarTab) {
      app.extensionManager.registerSidebarTab({
        id: TAB_ID, icon: "pi pi-bolt", title: "LCM Trainer", tooltip: "LCM-LoRA Trainer", type: "custom",
        render: (container) => { mount(container); },
        destroy: () => { clearInterval(state.timer); state.root = null; },
      });
    }
    globalThis.LCMLoRATrainer = { open: openPanel, state, poll, selectJob, refreshOptions, refreshJobs, drawChart, knownDone };
  },
});
