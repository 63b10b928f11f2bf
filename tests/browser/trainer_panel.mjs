// Drive the LCM-LoRA trainer panel in the real ComfyUI front end (Debian's headless chromium via
// playwright-core) and report what it shows as JSON.
//
//   node trainer_panel.mjs --url http://127.0.0.1:8188 --teacher "diffusers|tiny-sd" --data tiny_shapes \
//        --config tiny_cpu.yaml --name "panel lcm" --out result.json [--screenshot shot.png] [--chromium /usr/bin/chromium]
//
// Steps: open the panel (sidebar tab); a bad LoRA name ("../evil") must show the server's refusal;
// fill the form, Start, wait until the job is done while the loss chart and the validation grid
// fill in; screenshot; report the states seen, chart points, image size and console errors.
// The "recommended cfg" field (override normal_cfg): shown only for a normal-CFG config (--normal-config), kept
// but hidden and never sent for the guided one; after the job, with the normal-CFG config, a cfg of 1 shows
// the server's refusal naming lcd.normal_cfg and a cfg of 3 is sent (refused only for the taken LoRA name).
import { chromium } from "playwright-core";
import fs from "node:fs";

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const url = arg("url");
const out = arg("out");
const screenshot = arg("screenshot");
const executablePath = arg("chromium", process.env.CHROMIUM || "/usr/bin/chromium");
const form = { teacher: arg("teacher"), data: arg("data"), config: arg("config"), name: arg("name") };
const maxSteps = arg("max-steps", "12");
const normalConfig = arg("normal-config", "pcm_normal_cfg_sd15.yaml");
if (!url || !out || !form.teacher) {
  console.error("usage: node trainer_panel.mjs --url URL --teacher TYPE|NAME --data DIR --config FILE --name NAME --out FILE");
  process.exit(2);
}

const result = { console_errors: [], page_errors: [], statuses: [], chart_points_while_running: 0, start_bodies: [], normal_cfg_field: {} };
const browser = await chromium.launch({ executablePath, headless: true, args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });
try {
  const page = await browser.newPage({ viewport: { width: 1500, height: 950 } });
  page.on("console", (m) => { if (m.type() === "error") result.console_errors.push(`${m.text()} @ ${m.location()?.url ?? ""}`); });
  page.on("pageerror", (e) => result.page_errors.push(`${e} ${(e.stack ?? "").split("\n").slice(1, 3).join(" ")}`));
  page.on("request", (r) => { // every start request the panel sends, as sent
    if (r.method() === "POST" && new URL(r.url()).pathname.endsWith("/lcm_lora/train/jobs")) result.start_bodies.push(JSON.parse(r.postData()));
  });
  const host = new URL(url).hostname;
  await page.route("**/*", (route) => (new URL(route.request().url()).hostname === host ? route.continue() : route.abort()));
  await page.goto(url, { waitUntil: "domcontentloaded", timeout: 120000 });
  await page.waitForFunction(() => window.comfyAPI?.app?.app?.graph && globalThis.LCMLoRATrainer, null, { timeout: 120000 });
  result.sidebar = await page.evaluate(() => (window.comfyAPI.app.app.extensionManager?.getSidebarTabs?.() ?? []).some((t) => t.id === "lcm-lora-trainer"));
  // first start shows the workflow-templates dialog: close it (its mask would swallow clicks)
  for (let i = 0; i < 20 && (await page.locator(".p-dialog-mask").count()) > 0; i++) {
    await page.keyboard.press("Escape");
    await page.waitForTimeout(300);
  }
  await page.evaluate(() => globalThis.LCMLoRATrainer.open());
  const panel = page.locator("[data-lcm-trainer]");
  await panel.locator(`select[data-field=teacher] option[value="${form.teacher}"]`).waitFor({ state: "attached", timeout: 60000 });
  result.options = await panel.evaluate((root) => ({
    configs: [...root.querySelectorAll("select[data-field=config] option")].map((o) => o.value),
    teachers: [...root.querySelectorAll("select[data-field=teacher] option")].map((o) => o.value),
    data: [...root.querySelectorAll("select[data-field=data] option")].map((o) => o.value),
  }));

  // the normal-CFG field follows the chosen config
  const cfgField = () => panel.evaluate((root) => {
    const input = root.querySelector("input[data-override=normal_cfg]");
    return input && { shown: input.offsetParent !== null, disabled: input.disabled, placeholder: input.placeholder, value: input.value,
                      min: input.min, max: input.max, title: input.parentElement.title };
  });
  result.normal_cfg_configs = await page.evaluate(() => globalThis.LCMLoRATrainer.state.options.normal_cfg_configs);
  await panel.locator("select[data-field=config]").selectOption(normalConfig);
  result.normal_cfg_field.normal = await cfgField();
  await panel.locator("input[data-override=normal_cfg]").fill("3");
  await panel.locator("select[data-field=config]").selectOption(form.config);
  result.normal_cfg_field.guided = await cfgField();

  await panel.locator("select[data-field=config]").selectOption(form.config);
  await panel.locator("select[data-field=teacher]").selectOption(form.teacher);
  await panel.locator("select[data-field=data]").selectOption(form.data);
  for (const [k, v] of Object.entries({ max_steps: maxSteps, batch_size: "4", rank: "4", validation_every: arg("validation-every", "3"), checkpoint_every: "0" })) {
    await panel.locator(`input[data-override=${k}]`).fill(v);
  }
  // a refused request: the server's message is shown, no job starts
  await panel.locator("input[data-field=output_name]").fill("../evil");
  await panel.locator("button[data-action=start]").click();
  await panel.locator("[data-error]").waitFor({ timeout: 30000 });
  result.refusal = await panel.locator("[data-error]").innerText();

  await panel.locator("input[data-field=output_name]").fill(form.name);
  const previous = await page.evaluate(() => globalThis.LCMLoRATrainer.state.jobId); // jobs of earlier tests
  await panel.locator("button[data-action=start]").click();
  await page.waitForFunction((prev) => {
    const st = globalThis.LCMLoRATrainer.state;
    return st.job && st.job.id === st.jobId && st.job.id !== prev;
  }, previous, { timeout: 60000 });
  result.previous_job = previous;
  const deadline = Date.now() + 400000;
  for (;;) {
    const s = await page.evaluate(() => {
      const st = globalThis.LCMLoRATrainer.state;
      return { status: st.job?.status, step: st.job?.step, points: st.events.filter((e) => e.event === "step").length };
    });
    if (result.statuses.at(-1) !== s.status) result.statuses.push(s.status);
    if (s.status === "running") result.chart_points_while_running = Math.max(result.chart_points_while_running, s.points);
    if (s.status && !["running", "cancelling"].includes(s.status)) break;
    if (Date.now() > deadline) throw new Error(`job still ${s.status} at step ${s.step}`);
    await page.waitForTimeout(1000);
  }
  await page.waitForTimeout(500);
  await page.evaluate(() => globalThis.LCMLoRATrainer.poll());
  const img = panel.locator("img[data-image]");
  await img.waitFor({ timeout: 30000 });
  await page.waitForFunction(() => document.querySelector("[data-lcm-trainer] img[data-image]")?.complete, null, { timeout: 30000 });
  result.final = await page.evaluate(() => {
    const st = globalThis.LCMLoRATrainer.state;
    const root = document.querySelector("[data-lcm-trainer]");
    const image = root.querySelector("img[data-image]");
    const canvas = root.querySelector("canvas[data-chart]");
    // the chart really drew something: count non-transparent pixels
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let inked = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) inked++;
    return {
      status: st.job.status, lora_name: st.job.lora_name, message: st.job.message, step: st.job.step,
      chart_points: st.events.filter((e) => e.event === "step").length, chart_inked_pixels: inked,
      image: image.getAttribute("data-image"), image_natural: [image.naturalWidth, image.naturalHeight],
      cancel_disabled: root.querySelector("button[data-action=cancel]").disabled,
      status_text: root.querySelector("[data-status]").innerText,
    };
  });
  // the panel refreshed the node definitions: the new adapter is offered by LoraLoader
  await page.waitForFunction((name) => {
    const LiteGraph = window.LiteGraph ?? window.comfyAPI?.litegraph?.LiteGraph;
    const spec = LiteGraph?.registered_node_types?.LoraLoader?.nodeData?.input?.required?.lora_name;
    const values = Array.isArray(spec?.[0]) ? spec[0] : spec?.[1]?.options;
    return values?.includes(name);
  }, `${form.name}.safetensors`, { timeout: 30000 }).then(() => { result.loraloader_lists_it = true; }, () => {
    result.loraloader_lists_it = false;
  });
  // a job that finished while the panel was closed (nothing polled it to the end): listing the jobs refreshes the
  // loaders' lists once, and only once
  result.closed_panel_refresh = await page.evaluate(async () => {
    const T = globalThis.LCMLoRATrainer;
    const app = window.comfyAPI.app.app;
    const original = app.refreshComboInNodes;
    let calls = 0;
    app.refreshComboInNodes = async () => { calls++; };
    try {
      T.knownDone.ids.delete(T.state.jobId);
      await T.refreshJobs();
      const first = calls;
      await T.refreshJobs();
      return { first, again: calls - first };
    } finally {
      app.refreshComboInNodes = original;
    }
  });
  if (screenshot) {
    await page.screenshot({ path: screenshot, fullPage: false });
    result.screenshot = screenshot;
  }

  // the normal-CFG config again: the typed cfg is back; 1 is refused by the server naming the key
  const errorText = () => panel.evaluate((root) => root.querySelector("[data-error]")?.innerText ?? "");
  await panel.locator("select[data-field=config]").selectOption(normalConfig);
  result.normal_cfg_field.normal_again = await cfgField();
  await panel.locator("input[data-override=normal_cfg]").fill("1");
  await panel.locator("button[data-action=start]").click();
  await page.waitForFunction(() => (document.querySelector("[data-lcm-trainer] [data-error]")?.innerText ?? "").includes("normal_cfg"),
    null, { timeout: 30000 });
  result.normal_cfg_refusal = await errorText();
  // 3 is sent as a number; the server refuses the request only for the LoRA name the job above took
  await panel.locator("input[data-override=normal_cfg]").fill("3");
  await panel.locator("button[data-action=start]").click();
  await page.waitForFunction(() => (document.querySelector("[data-lcm-trainer] [data-error]")?.innerText ?? "").includes("already exists"),
    null, { timeout: 30000 });
  result.taken_name_refusal = await errorText();
} finally {
  await browser.close();
  fs.writeFileSync(out, JSON.stringify(result, null, 1));
}
