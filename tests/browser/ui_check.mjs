// Drive the real ComfyUI front end (served by a running ComfyUI with the pack loaded) in Debian's
// headless chromium via playwright-core, and report what it sees as JSON.
//
//   node ui_check.mjs --url http://127.0.0.1:8188 --workflows ../../example_workflows \
//        --out result.json --screenshot shot.png [--chromium /usr/bin/chromium]
//
// Checks (results go to --out; the pytest wrapper asserts on them):
//  * the pack's extension is registered (window.LCMLoRA);
//  * every example workflow loads and the front end's own graphToPrompt() gives its API prompt;
//  * the examples raise no LCM warning; an LCM-patched model feeding a KSampler with cfg 7,
//    20 steps and euler does (badge state on the node + toast in the DOM);
//  * LCM Adapter Merge shows one empty adapter slot and gains the next one when it is filled;
//  * inputs a setting ignores are hidden (gamma/eta by mode, the merge's rank for concat);
//  * a bypassed node or a Reroute between an LCM-patched model and a sampler keeps the warnings; a muted one not;
//  * a TCD adapter (loader `sampling` tcd, or TCD metadata read through /view_metadata, file
//    given by --tcd-lora) wants the tcd sampler and has no 8-step limit;
//  * no cfg warning when cfg applies to the first steps only (LCM KSampler / LCM CFG Guider
//    cfg_steps below the steps); cfg on every step still warns.
//  * a PCM / TSCD adapter (loader `sampling` pcm / tscd + phases, or metadata read through
//    /view_metadata, file given by --pcm-lora) wants tcd at γ 0 on its phase edges (LCM KSampler
//    auto, or LCM Scheduler schedule pcm / tscd with its phases) and steps fitting its phases;
//    the loader's / scheduler's phases and the scheduler's original_steps are hidden when ignored.
//  * a "normal CFG" adapter (metadata lcm_lora.recommended_cfg > 1: trained without solver guidance; files
//    given by --normal-lora, a 4-phase PCM recipe at cfg 2, and --normal-lcm-lora, an LCM recipe at cfg 5)
//    gets no cfg warning up to 2 × its cfg on every step, one above it, and one at cfg <= 1 / cfg_steps 0;
//    guided adapters keep the cfg > 2 check; readRecipe's cfg, γ, steps, phases, sampler and
//    phase starts for the metadata in --recipe-metas (a JSON
//    list, compared with lcm_core.sampling_recipe.read_recipe by the pytest wrapper).
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const url = arg("url");
const workflowsDir = arg("workflows");
const out = arg("out");
const screenshot = arg("screenshot");
const executablePath = arg("chromium", process.env.CHROMIUM || "/usr/bin/chromium");
const tcdLora = arg("tcd-lora", "browser/tcd-recipe.safetensors"); // written by test_comfy_browser.py
const pcmLora = arg("pcm-lora", "browser/pcm-recipe.safetensors"); // likewise (pcm, 2 phases)
const normalLora = arg("normal-lora", null); // likewise (pcm, 4 phases, recommended cfg 2)
const normalLcmLora = arg("normal-lcm-lora", null); // likewise (lcm, recommended cfg 5)
const recipeMetas = arg("recipe-metas", null) ? JSON.parse(fs.readFileSync(arg("recipe-metas"), "utf8")) : [];
if (!url || !workflowsDir || !out) {
  console.error("usage: node ui_check.mjs --url URL --workflows DIR --out FILE [--screenshot FILE]");
  process.exit(2);
}

const result = { console_errors: [], page_errors: [], prompts: {}, example_warnings: {} };
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1600, height: 900 } });
  page.on("console", (m) => {
    if (m.type() === "error") result.console_errors.push(`${m.text()} @ ${m.location()?.url ?? ""}`);
  });
  page.on("pageerror", (e) => result.page_errors.push(String(e)));
  // Only the local ComfyUI is reachable in tests: the front end's calls to outside services are cut.
  const host = new URL(url).hostname;
  await page.route("**/*", (route) =>
    new URL(route.request().url()).hostname === host ? route.continue() : route.abort());
  await page.goto(url, { waitUntil: "domcontentloaded", timeout: 120000 });
  // ready = app up, our extension loaded, and the node definitions registered
  await page.waitForFunction(() => {
    const LiteGraph = window.LiteGraph ?? window.comfyAPI?.litegraph?.LiteGraph;
    return window.comfyAPI?.app?.app?.graph && globalThis.LCMLoRA &&
      LiteGraph?.registered_node_types?.LCMAdapterMerge && LiteGraph.registered_node_types.KSampler;
  }, null, { timeout: 120000 });
  // page-side helpers the graph cases below share (page.evaluate bodies cannot close over Node-side functions)
  await page.evaluate(() => {
    const L = () => globalThis.LCMLoRA;
    window.__lcmCheck = {
      problems: (id) => L().checkGraph().filter((w) => w.nodeId === id).flatMap((w) => w.problems),
      messages: (id) => L().checkGraph().filter((w) => w.nodeId === id).map((w) => w.message),
      set: (node, name, value) => {
        const w = node.widgets.find((x) => x.name === name);
        w.value = value;
        w.callback?.(value);
      },
      // load an API workflow into the canvas and let the extension's checks settle
      load: async (wf) => {
        await window.comfyAPI.app.app.loadGraphData(wf, true, false, null);
        await new Promise((r) => setTimeout(r, 200));
      },
    };
  });
  result.extension_registered = await page.evaluate(() => {
    const app = window.comfyAPI.app.app;
    const names = (app.extensions ?? []).map((e) => e.name);
    return { lcm: typeof globalThis.LCMLoRA?.checkGraph === "function", names: names.filter((n) => n.startsWith("lcm")) };
  });

  // Every example: load, convert with the front end's own graphToPrompt, check warnings.
  for (const file of fs.readdirSync(workflowsDir).filter((f) => f.endsWith(".json")).sort()) {
    const wf = JSON.parse(fs.readFileSync(path.join(workflowsDir, file), "utf8"));
    const r = await page.evaluate(async (wf) => {
      const app = window.comfyAPI.app.app;
      await app.loadGraphData(wf, true, false, null);
      const p = await app.graphToPrompt();
      return { output: p.output, warnings: globalThis.LCMLoRA.checkGraph().map((w) => w.message) };
    }, wf);
    result.prompts[file.replace(/\.json$/, "")] = r.output;
    result.example_warnings[file.replace(/\.json$/, "")] = r.warnings;
    await page.keyboard.press("Escape"); // close a "missing models" dialog, if any
  }

  // Merge node: slots on demand.
  const mergeFile = fs.readdirSync(workflowsDir).find((f) => f.includes("merge"));
  const wfMerge = JSON.parse(fs.readFileSync(path.join(workflowsDir, mergeFile), "utf8"));
  result.merge_slots = await page.evaluate(async (wf) => {
    const app = window.comfyAPI.app.app;
    await app.loadGraphData(wf, true, false, null);
    await new Promise((r) => setTimeout(r, 200));
    const node = app.graph._nodes.find((n) => n.type === "LCMAdapterMerge");
    const hidden = () => node.widgets.filter((w) => w.hidden).map((w) => w.name);
    const before = { visible: globalThis.LCMLoRA.visibleSlots(node), hidden: hidden(), height: node.size[1] };
    const a3 = node.widgets.find((w) => w.name === "adapter_3");
    a3.value = a3.options.values.find((v) => v !== "None");
    a3.callback?.(a3.value);
    const after = { visible: globalThis.LCMLoRA.visibleSlots(node), hidden: hidden(), height: node.size[1] };
    const prompt = (await app.graphToPrompt()).output;
    const mergeInputs = prompt[String(node.id)].inputs;
    // the merge report arrives with the node's "executed" message
    const heightBefore = node.size[1];
    node.onExecuted?.({ text: ["concat: 0.8·style + 1·lcm\n33 modules, rank 12, relative error 0 (exact)"] });
    const report = { lines: node.__lcmReportLines ?? [], grew: node.size[1] > heightBefore };
    return { before, after, adapter_3: mergeInputs.adapter_3 ?? null, chosen: a3.value, report };
  }, wfMerge);

  // An LCM-patched model feeding a stock KSampler with cfg 7, 20 steps, euler → warning.
  const wfA = JSON.parse(fs.readFileSync(path.join(workflowsDir, fs.readdirSync(workflowsDir).find((f) => f.startsWith("a_"))), "utf8"));
  result.warning_case = await page.evaluate(async (wf) => {
    const app = window.comfyAPI.app.app;
    const LiteGraph = window.LiteGraph ?? window.comfyAPI?.litegraph?.LiteGraph;
    await app.loadGraphData(wf, true, false, null);
    const graph = app.graph;
    const loader = graph._nodes.find((n) => n.type === "LCMLoraLoader");
    const ks = LiteGraph.createNode("KSampler");
    ks.pos = [1250, 640];
    graph.add(ks);
    loader.connect(0, ks, ks.inputs.findIndex((i) => i.name === "model"));
    ks.widgets.find((w) => w.name === "cfg").value = 7;
    ks.widgets.find((w) => w.name === "steps").value = 20;
    ks.widgets.find((w) => w.name === "sampler_name").value = "euler";
    const warnings = globalThis.LCMLoRA.refreshWarnings();
    const mine = warnings.filter((w) => w.nodeId === ks.id);
    app.canvas.ds.scale = 0.68;
    app.canvas.ds.offset = [30, 60];
    graph.setDirtyCanvas(true, true);
    return { problems: mine.flatMap((w) => w.problems), badge: !!ks.__lcmWarning, ksId: ks.id };
  }, wfA);
  await page.waitForTimeout(1500);
  result.toast_text = await page.evaluate(() =>
    [...document.querySelectorAll(".p-toast-message")].map((e) => e.innerText).join("\n"));
  if (screenshot) {
    await page.screenshot({ path: screenshot, fullPage: false });
    result.screenshot = screenshot;
  }
  result.warning_cleared = await page.evaluate((ksId) => {
    const app = window.comfyAPI.app.app;
    const ks = app.graph.getNodeById(ksId);
    ks.widgets.find((w) => w.name === "cfg").value = 1.5;
    ks.widgets.find((w) => w.name === "steps").value = 4;
    ks.widgets.find((w) => w.name === "sampler_name").value = "lcm";
    const left = globalThis.LCMLoRA.refreshWarnings().filter((w) => w.nodeId === ksId);
    return left.length === 0 && !ks.__lcmWarning;
  }, result.warning_case.ksId);

  // A bypassed node or a Reroute between the loader and the KSampler passes the LCM model on (ComfyUI runs a
  // bypassed node as a pass-through and drops Reroutes); a muted one stops it.
  result.pass_through_case = await page.evaluate(async (wf) => {
    const app = window.comfyAPI.app.app;
    const LiteGraph = window.LiteGraph ?? window.comfyAPI?.litegraph?.LiteGraph;
    const { problems, set, load } = window.__lcmCheck;
    await load(wf);
    const graph = app.graph;
    const loader = graph._nodes.find((n) => n.type === "LCMLoraLoader");
    const make = (type) => { const n = LiteGraph.createNode(type); graph.add(n); return n; };
    const ks = make("KSampler");
    set(ks, "cfg", 7);
    set(ks, "steps", 20);
    set(ks, "sampler_name", "euler");
    const middle = make("LoraLoaderModelOnly");
    loader.connect(0, middle, middle.inputs.findIndex((i) => i.name === "model"));
    middle.connect(0, ks, ks.inputs.findIndex((i) => i.name === "model"));
    const out = { direct: problems(ks.id) };
    middle.mode = 4;
    out.bypassed = problems(ks.id);
    middle.mode = 2;
    out.muted = problems(ks.id);
    graph.remove(middle);
    const reroute = make("Reroute");
    loader.connect(0, reroute, 0);
    reroute.connect(0, ks, ks.inputs.findIndex((i) => i.name === "model"));
    out.reroute = problems(ks.id);
    graph.remove(reroute);
    graph.remove(ks);
    return out;
  }, wfA);

  // Ignored inputs hidden, and the TCD recipe in the warnings.
  result.recipe_case = await page.evaluate(async ({ wf, tcdLora }) => {
    const app = window.comfyAPI.app.app;
    const LiteGraph = window.LiteGraph ?? window.comfyAPI?.litegraph?.LiteGraph;
    await app.loadGraphData(wf, true, false, null);
    await new Promise((r) => setTimeout(r, 200));
    const graph = app.graph;
    const L = globalThis.LCMLoRA;
    const loader = graph._nodes.find((n) => n.type === "LCMLoraLoader");
    const lks = graph._nodes.find((n) => n.type === "LCMKSampler");
    const setMode = (node, value) => {
      const w = node.widgets.find((x) => x.name === "mode");
      w.value = value;
      w.callback?.(value);
      return L.hiddenWidgets(node);
    };
    const out = { hidden: { auto: L.hiddenWidgets(lks), lcm: setMode(lks, "lcm"), tcd: setMode(lks, "tcd") } };
    setMode(lks, "auto");
    const merge = LiteGraph.createNode("LCMAdapterMerge");
    graph.add(merge);
    L.updateIgnoredInputs(merge);
    out.merge_hidden_concat = L.hiddenWidgets(merge).includes("rank");
    const method = merge.widgets.find((w) => w.name === "method");
    method.value = "svd";
    method.callback?.("svd");
    out.merge_hidden_svd = L.hiddenWidgets(merge).includes("rank");
    method.value = "fuse";
    method.callback?.("fuse");
    out.merge_hidden_fuse = L.hiddenWidgets(merge).includes("rank");
    graph.remove(merge);

    const ks = LiteGraph.createNode("KSampler");
    graph.add(ks);
    loader.connect(0, ks, ks.inputs.findIndex((i) => i.name === "model"));
    ks.widgets.find((w) => w.name === "cfg").value = 1;
    ks.widgets.find((w) => w.name === "steps").value = 12;
    ks.widgets.find((w) => w.name === "sampler_name").value = "lcm";
    const problems = (id) => L.checkGraph().filter((w) => w.nodeId === id).flatMap((w) => w.problems);
    out.lcm_adapter = { stock: problems(ks.id), ours_auto: problems(lks.id) };
    const sampling = loader.widgets.find((w) => w.name === "sampling");
    sampling.value = "tcd";
    out.tcd_chosen = { stock: problems(ks.id), ours_auto: problems(lks.id) };
    setMode(lks, "lcm");
    out.tcd_chosen.ours_lcm = problems(lks.id);
    setMode(lks, "auto");
    sampling.value = "auto";
    if (tcdLora) {
      const name = loader.widgets.find((w) => w.name === "lora_name");
      name.value = tcdLora;
      L.adapterRecipe(tcdLora);
      for (let i = 0; i < 50 && !L.recipes.has(tcdLora); i++) await new Promise((r) => setTimeout(r, 100));
      out.metadata = { recipe: L.recipes.get(tcdLora) ?? null, stock: problems(ks.id), ours_auto: problems(lks.id) };
    }
    // ComfyUI's Refresh: the loras folder may have changed, so the recipes are read again
    L.recipes.set("gone.safetensors", null);
    await app.refreshComboInNodes();
    out.recipes_after_refresh = { gone: L.recipes.has("gone.safetensors"), size: L.recipes.size };
    graph.remove(ks);
    return out;
  }, { wf: wfA, tcdLora });

  // cfg on the first steps only (negative prompts with few-step adapters): no cfg warning.
  result.cfg_steps_case = await page.evaluate(async (wf) => {
    const app = window.comfyAPI.app.app;
    const LiteGraph = window.LiteGraph ?? window.comfyAPI?.litegraph?.LiteGraph;
    // a workflow saved before cfg_steps existed: its LCM KSampler has one widget value less
    const old = JSON.parse(JSON.stringify(wf));
    const oldKs = old.nodes.find((n) => n.type === "LCMKSampler");
    oldKs.widgets_values = oldKs.widgets_values.slice(0, -1);
    await app.loadGraphData(old, true, false, null);
    const oldPrompt = (await app.graphToPrompt()).output;
    await app.loadGraphData(wf, true, false, null);
    await new Promise((r) => setTimeout(r, 200));
    const graph = app.graph;
    const L = globalThis.LCMLoRA;
    const problems = (id) => L.checkGraph().filter((w) => w.nodeId === id).flatMap((w) => w.problems);
    const set = (node, name, value) => { node.widgets.find((w) => w.name === name).value = value; };
    const loader = graph._nodes.find((n) => n.type === "LCMLoraLoader");
    const lks = graph._nodes.find((n) => n.type === "LCMKSampler");
    const out = { ks_default_cfg_steps: lks.widgets.find((w) => w.name === "cfg_steps")?.value ?? null,
                  old_workflow: old, old_workflow_prompt: oldPrompt };
    set(lks, "cfg", 3);
    out.ks_every_step = problems(lks.id);
    set(lks, "cfg_steps", 2);
    out.ks_first_2_of_4 = problems(lks.id);
    set(lks, "cfg_steps", 4);
    out.ks_all_4 = problems(lks.id);
    // SamplerCustomAdvanced with the LCM CFG Guider (or ComfyUI's CFGGuider)
    const make = (type) => { const n = LiteGraph.createNode(type); graph.add(n); return n; };
    const adv = make("SamplerCustomAdvanced");
    const guider = make("LCMCFGGuider");
    const sched = make("LCMScheduler");
    const sampler = make("LCMSampler");
    const link = (from, slot, to, name) => from.connect(slot, to, to.inputs.findIndex((i) => i.name === name));
    link(loader, 0, guider, "model");
    link(guider, 0, adv, "guider");
    link(sched, 0, adv, "sigmas");
    link(sampler, 0, adv, "sampler");
    out.guider_defaults = { cfg: guider.widgets.find((w) => w.name === "cfg").value,
                            cfg_steps: guider.widgets.find((w) => w.name === "cfg_steps").value };
    out.guider_first_steps = problems(adv.id);
    set(guider, "cfg_steps", 10000);
    out.guider_every_step = problems(adv.id);
    const stock = make("CFGGuider");
    link(loader, 0, stock, "model");
    set(stock, "cfg", 3);
    link(stock, 0, adv, "guider");
    out.stock_guider = problems(adv.id);
    for (const n of [adv, guider, sched, sampler, stock]) graph.remove(n);
    return out;
  }, wfA);

  // PCM / TSCD: phased recipes in the warnings and the hidden inputs.
  const gFile = fs.readdirSync(workflowsDir).find((f) => f.startsWith("g_"));
  if (gFile) {
    const wfG = JSON.parse(fs.readFileSync(path.join(workflowsDir, gFile), "utf8"));
    result.phased_case = await page.evaluate(async ({ wf, pcmLora }) => {
      const app = window.comfyAPI.app.app;
      const LiteGraph = window.LiteGraph ?? window.comfyAPI?.litegraph?.LiteGraph;
      const { problems, messages, set, load } = window.__lcmCheck;
      await load(wf);
      const graph = app.graph;
      const L = globalThis.LCMLoRA;
      const find = (type) => graph._nodes.find((n) => n.type === type);
      const loader = find("LCMLoraLoader");
      const sched = find("LCMScheduler");
      const sampler = find("LCMSampler");
      const custom = find("SamplerCustom");
      const out = { tops: { pcm4: L.phaseTops("pcm", 4), tscd4: L.phaseTops("tscd", 4), pcm3: L.phaseTops("pcm", 3),
                            pcm8: L.phaseTops("pcm", 8), tscd3: L.phaseTops("tscd", 3), pcm1: L.phaseTops("pcm", 1) } };
      L.updateIgnoredInputs(loader);
      L.updateIgnoredInputs(sched);
      out.hidden = { loader_pcm: L.hiddenWidgets(loader), sched_pcm: L.hiddenWidgets(sched) };
      out.example = problems(custom.id);
      set(sched, "schedule", "lcm");
      out.hidden.sched_lcm = L.hiddenWidgets(sched);
      out.sched_lcm = problems(custom.id);
      set(sched, "schedule", "pcm");
      set(sched, "phases", 2);
      out.sched_phases_2 = problems(custom.id);
      set(sched, "phases", 4);
      set(sched, "steps", 3);
      out.steps_3 = problems(custom.id);
      set(sched, "steps", 2);
      out.steps_2 = problems(custom.id);
      set(sched, "steps", 8);
      out.steps_8 = problems(custom.id);
      set(sched, "steps", 4);
      set(sampler, "mode", "tcd");
      out.tcd_gamma_03 = problems(custom.id);
      set(sampler, "gamma", 0);
      out.tcd_gamma_0 = problems(custom.id);
      // an adapter that records its own γ (output.recommended_gamma): that γ is the one the warning wants
      const gammaRecipe = L.readRecipe({ "lcm_lora.objective": "pcm", "lcm_lora.phases": "4",
                                         "lcm_lora.recommended_gamma": "0.5" });
      out.recipe_gamma = { gamma: gammaRecipe.gamma,
                           at_05: L.phasedProblems({ ours: true, samplerName: "tcd", gamma: 0.5 }, gammaRecipe, []),
                           at_0: L.phasedProblems({ ours: true, samplerName: "tcd", gamma: 0 }, gammaRecipe, []) };
      // an adapter distilled on phases of other lengths (lcd.phase_starts → lcm_lora.phase_starts)
      const withStarts = (text) => L.readRecipe({ "lcm_lora.objective": "pcm", "lcm_lora.phases": "4",
                                                  "lcm_lora.phase_starts": text });
      const startsRecipe = withStarts("0,15,30,41");
      out.recipe_starts = {
        starts: startsRecipe.phaseStarts, tops: L.phaseTops("pcm", 4, startsRecipe.phaseStarts),
        bad: ["0,15,30", "1,15,30,41", "0,30,15,41", "0,15,30,50", "0,15,x,41", "0,15,30.5,41"].map((t) => withStarts(t).phaseStarts),
        scheduler: L.phasedProblems({ ours: true, samplerName: "tcd", gamma: 0,
                                      schedule: { scheduler: "pcm", phases: 4, phaseStarts: "" } }, startsRecipe, []),
        scheduler_set: L.phasedProblems({ ours: true, samplerName: "tcd", gamma: 0,
                                          schedule: { scheduler: "pcm", phases: 4, phaseStarts: " 0, 15,30,41" } }, startsRecipe, []),
        even_adapter: L.phasedProblems({ ours: true, samplerName: "tcd", gamma: 0,
                                         schedule: { scheduler: "pcm", phases: 4, phaseStarts: "0,15,30,41" } },
                                       withStarts(""), []),
        follows: L.phasedProblems({ ours: true, samplerName: "tcd", gamma: 0, schedule: { follows: true } }, startsRecipe, []),
        // text the LCM Scheduler refuses; the even split spelt out (the same edges as empty)
        unreadable: L.phasedProblems({ ours: true, samplerName: "tcd", gamma: 0,
                                       schedule: { scheduler: "pcm", phases: 4, phaseStarts: "0,15,30" } }, withStarts(""), []),
        even_spelt_out: L.phasedProblems({ ours: true, samplerName: "tcd", gamma: 0,
                                           schedule: { scheduler: "pcm", phases: 4, phaseStarts: "0,12,25,37" } }, withStarts(""), []),
        // a multiple of the phases that does not fit between the edges (the node refuses it), and one that does
        steps_40: L.phasedProblems({ ours: true, samplerName: "tcd", gamma: 0, steps: 40, schedule: { follows: true } },
                                   startsRecipe, []),
        steps_8: L.phasedProblems({ ours: true, samplerName: "tcd", gamma: 0, steps: 8, schedule: { follows: true } },
                                  startsRecipe, []),
        even_denoise_005: L.phasedProblems({ ours: true, samplerName: "tcd", gamma: 0, steps: 4, denoise: 0.05,
                                             schedule: { follows: true } }, withStarts(""), []),
        timesteps: [[40, [0, 15, 30, 41]], [8, [0, 15, 30, 41]], [80, null], [12, null], [2, [0, 15, 30, 41]]]
          .map(([total, st]) => L.phasedTimesteps("pcm", total, 4, st)),
      };
      set(sampler, "mode", "lcm");
      out.mode_lcm = problems(custom.id);
      set(sampler, "mode", "auto");
      const make = (type) => { const n = LiteGraph.createNode(type); graph.add(n); return n; };
      const lks = make("LCMKSampler");
      loader.connect(0, lks, lks.inputs.findIndex((i) => i.name === "model"));
      out.ks_auto = problems(lks.id);
      set(lks, "steps", 5);
      out.ks_auto_5 = problems(lks.id);
      set(lks, "steps", 2);
      set(lks, "denoise", 0.5);
      out.ks_auto_2_of_4 = problems(lks.id); // the schedule of int(2 / 0.5) = 4 steps
      set(lks, "denoise", 1);
      set(lks, "steps", 4);
      set(lks, "mode", "tcd");
      set(lks, "gamma", 0);
      out.ks_tcd = problems(lks.id);
      set(lks, "mode", "auto");
      const ks = make("KSampler");
      loader.connect(0, ks, ks.inputs.findIndex((i) => i.name === "model"));
      set(ks, "cfg", 1);
      set(ks, "steps", 4);
      set(ks, "sampler_name", "lcm");
      set(ks, "scheduler", "sgm_uniform");
      out.stock = problems(ks.id);
      out.stock_message = messages(ks.id)[0] ?? "";
      set(loader, "sampling", "tscd");
      out.tscd_chosen = problems(custom.id);
      out.tscd_message = messages(custom.id)[0] ?? "";
      set(loader, "sampling", "auto");
      out.hidden.loader_auto = L.hiddenWidgets(loader);
      out.auto_no_metadata = { custom: problems(custom.id), ks_auto: problems(lks.id) }; // an LCM adapter now
      if (pcmLora) {
        set(loader, "lora_name", pcmLora);
        L.adapterRecipe(pcmLora);
        for (let i = 0; i < 50 && !L.recipes.has(pcmLora); i++) await new Promise((r) => setTimeout(r, 100));
        out.metadata = { recipe: L.recipes.get(pcmLora) ?? null, custom: problems(custom.id), ks_auto: problems(lks.id),
                         message: messages(custom.id)[0] ?? "" };
      }
      for (const n of [lks, ks]) graph.remove(n);
      return out;
    }, { wf: wfG, pcmLora });

    // "Normal CFG" adapters: the cfg check follows the recipe's cfg.
    result.normal_cfg_case = await page.evaluate(async ({ wf, normalLora, normalLcmLora, recipeMetas }) => {
      const app = window.comfyAPI.app.app;
      const LiteGraph = window.LiteGraph ?? window.comfyAPI?.litegraph?.LiteGraph;
      const { problems, messages, set } = window.__lcmCheck;
      await window.__lcmCheck.load(wf);
      const graph = app.graph;
      const L = globalThis.LCMLoRA;
      const load = async (loader, name) => {
        set(loader, "lora_name", name);
        L.adapterRecipe(name);
        for (let i = 0; i < 50 && !L.recipes.has(name); i++) await new Promise((r) => setTimeout(r, 100));
        return L.recipes.get(name) ?? null;
      };
      const make = (type) => { const n = LiteGraph.createNode(type); graph.add(n); return n; };
      const loader = graph._nodes.find((n) => n.type === "LCMLoraLoader");
      const custom = graph._nodes.find((n) => n.type === "SamplerCustom");
      const out = { parity: recipeMetas.map((m) => {
                      const r = L.readRecipe(m);
                      return r ? [r.cfg, r.gamma, r.steps, r.phases, r.sampler, r.phaseStarts] : null;
                    }),
                    factor: L.NORMAL_CFG_FACTOR };
      // guided: the example (sampling pcm chosen for a file without metadata) keeps today's cfg > 2 check
      set(custom, "cfg", 3);
      out.guided = { cfg3: problems(custom.id) };
      set(custom, "cfg", 1);
      out.guided.cfg1 = problems(custom.id);
      if (!normalLora) return out;
      set(loader, "sampling", "auto");
      out.recipe = await load(loader, normalLora);
      out.custom = {};
      for (const c of [1, 0.5, 1.5, 2, 4, 4.5, 7.5]) {
        set(custom, "cfg", c);
        out.custom[String(c)] = problems(custom.id);
      }
      set(custom, "cfg", 1);
      out.custom_message = messages(custom.id)[0] ?? "";
      const lks = make("LCMKSampler");
      loader.connect(0, lks, lks.inputs.findIndex((i) => i.name === "model"));
      out.ks = {};
      set(lks, "cfg", 2);
      out.ks.cfg2 = problems(lks.id);
      set(lks, "cfg", 1);
      out.ks.cfg1 = problems(lks.id);
      set(lks, "cfg", 2);
      set(lks, "cfg_steps", 0);
      out.ks.cfg_steps_0 = problems(lks.id);
      set(lks, "cfg", 6);
      set(lks, "cfg_steps", 2);
      out.ks.cfg6_first_2 = problems(lks.id);
      set(lks, "cfg_steps", 10000);
      out.ks.cfg6_every = problems(lks.id);
      graph.remove(lks);
      if (normalLcmLora) {
        out.lcm = { recipe: await load(loader, normalLcmLora) };
        const ks = make("KSampler");
        loader.connect(0, ks, ks.inputs.findIndex((i) => i.name === "model"));
        set(ks, "steps", 4);
        set(ks, "sampler_name", "lcm");
        set(ks, "scheduler", "sgm_uniform");
        for (const c of [5, 10, 10.5, 1]) {
          set(ks, "cfg", c);
          out.lcm[String(c)] = problems(ks.id);
        }
        out.lcm.message = messages(ks.id)[0] ?? "";
        graph.remove(ks);
      }
      return out;
    }, { wf: wfG, normalLora, normalLcmLora, recipeMetas });
  }
} finally {
  await browser.close();
}
fs.writeFileSync(out, JSON.stringify(result, null, 1));
console.log(`wrote ${out}`);
