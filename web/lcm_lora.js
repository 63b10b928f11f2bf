// LCM-LoRA front-end extension (ComfyUI web extension, loaded from /extensions/<pack>/lcm_lora.js).
//
// * Warns in the graph (a badge on the sampler node + a toast) when an LCM-patched model —
//   LCM-LoRA Loader / LCM Adapter Merge with "patch sampling to LCM" on, or
//   ModelSamplingDiscrete(sampling=lcm) — feeds a sampler with cfg > 2, steps > 8 or a
//   sampler that is not LCM/TCD. LCM-LoRA is distilled for 2-8 steps at cfg 1-2 with the
//   LCM sampler (Luo et al. 2023, arXiv 2311.05556). No cfg warning when cfg applies to the first steps
//   only (LCM KSampler / LCM CFG Guider `cfg_steps` below the steps): that is how a negative prompt
//   works with a few-step adapter (nodes/lcm_cfg_guider.py).
// * LCM Adapter Merge: adapter slots 3-8 appear on demand (one empty slot after the last
//   used one) and the merge report is drawn on the node after it runs.
// * The checks follow the adapter's sampling recipe (lcm_core/sampling_recipe.py), read from
//   its safetensors metadata through ComfyUI's own /view_metadata/loras route: a TCD adapter
//   (metadata, or the loader's `sampling` input set to tcd) wants the tcd sampler (LCM KSampler /
//   LCM Sampler in mode auto or tcd) and has no 8-step limit; adapters without metadata are LCM.
// * PCM (Phased Consistency Models, Wang et al. 2024, arXiv 2405.18407) and TSCD (Hyper-SD, Ren et
//   al. 2024, arXiv 2404.13686) adapters (metadata lcm_lora.objective pcm / tscd + lcm_lora.phases,
//   or the loader's `sampling` pcm / tscd + `phases`) map a latent to the lower edge of its phase:
//   they want the tcd sampler at γ 0 on their phase edges (LCM KSampler mode auto, or LCM Sampler
//   auto / tcd at γ 0 + LCM Scheduler schedule pcm / tscd with the adapter's phases) and steps that
//   are the phases, a divisor or a multiple of them (lcm_core/phased_timesteps.py). LCM Scheduler
//   phase edges feeding an LCM / TCD adapter warn too (a PCM LoRA the loader treats as LCM).
// * "Normal CFG" adapters (trained with lcd.solver_guidance false, PCM's --not_apply_cfg_solver; metadata
//   lcm_lora.recommended_cfg R > 1) have no guidance distilled in: they are sampled with real CFG at about R.
//   For them the cfg check is: no warning up to NORMAL_CFG_FACTOR × R on every step (the slider works as with
//   the base model, whose usable range reaches about twice its usual cfg: SD1.5 7.5 -> 15, the top of LCM's
//   distilled ω range), a warning above it, and a warning at cfg <= 1 (or cfg_steps 0): unguided samples.
//   Guided adapters and adapters without metadata keep the cfg 1-2 check.
// * Inputs a setting ignores are hidden (ComfyUI 0.3.64's V3 schema has no working dynamic
//   combo yet): gamma unless mode is tcd, eta in mode lcm, the merge's rank unless method is svd,
//   the loader's phases unless sampling is pcm / tscd, the scheduler's phases unless its schedule
//   is pcm / tscd and its original_steps when it is.
// * LCM Adapter Save: refreshes every LoRA list after a save.
// window.LCMLoRA exposes the checks for tests and curious users.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EXT_NAME = "lcm_lora.ui";
const MAX_CFG = 2;
const MAX_STEPS = 8;
const NORMAL_CFG_FACTOR = 2; // normal-CFG adapters: no warning up to this × their recommended cfg (see above)
const MERGE = "LCMAdapterMerge";
const MAX_SLOTS = 8;
const LCM_SAMPLER_NAMES = ["lcm", "tcd"];
const LOADER = "LCMLoraLoader";
const GUIDER = "LCMCFGGuider";
const EVERY_STEP = 10000; // cfg_steps default: cfg on every step (lcm_core/cfg_steps.py EVERY_STEP)
const PHASED = ["pcm", "tscd"]; // lcm_core/sampling_recipe.py PHASED
const OBJECTIVES = ["lcm", "tcd", ...PHASED];
const DEFAULT_PHASES = 4;
const PAPERS = { pcm: "PCM, arXiv 2405.18407", tscd: "Hyper-SD TSCD, arXiv 2404.13686" };
// stock SIGMAS nodes: their sigmas are not a phased adapter's edges
const STOCK_SCHEDULERS = ["BasicScheduler", "KarrasScheduler", "ExponentialScheduler", "PolyexponentialScheduler",
                          "SDTurboScheduler", "BetaSamplingScheduler", "LaplaceScheduler", "VPScheduler",
                          "AlignYourStepsScheduler", "GITSScheduler", "OptimalStepsScheduler"];

// -- sampling recipe from the adapter's metadata (mirror of lcm_core/sampling_recipe.read_recipe) --
const recipes = new Map(); // lora name -> recipe | null (no metadata) ; pending names in `fetching`
const fetching = new Set();

function readRecipe(meta) {
  const objective = meta?.["lcm_lora.objective"];
  if (!OBJECTIVES.includes(objective)) return null;
  const phased = PHASED.includes(objective);
  // a phased adapter jumps between its phase edges: the TCD sampler, whatever the metadata names (as read_recipe)
  const sampler = phased ? "tcd"
    : (["lcm", "tcd"].includes(meta["lcm_lora.recommended_sampler"]) ? meta["lcm_lora.recommended_sampler"] : objective);
  let phases = phased ? integerText(meta["lcm_lora.phases"]) : null;
  // PCM's phases split the 50-point DDIM grid, TSCD's the 1000 timesteps (sampling_recipe.MAX_PHASES)
  if (phased && !(phases >= 1 && phases <= (objective === "pcm" ? 50 : 1000))) phases = DEFAULT_PHASES;
  const steps = integerText(meta["lcm_lora.recommended_steps"]);
  const defaultGamma = objective === "tcd" ? 0.3 : (phased ? 0 : null);
  // read_recipe takes float(text) and falls back to the objective's default for text that is no finite cfg >= 0,
  // no γ in [0, 1] (the samplers refuse any other), no step count in [1, 1000]
  const cfgValue = numberText(meta["lcm_lora.recommended_cfg"]);
  const cfg = Number.isFinite(cfgValue) && cfgValue >= 0 ? cfgValue : 1;
  const gammaValue = numberText(meta["lcm_lora.recommended_gamma"]);
  const gamma = Number.isFinite(gammaValue) && gammaValue >= 0 && gammaValue <= 1 ? gammaValue : defaultGamma;
  const phaseStarts = objective === "pcm" ? readPhaseStarts(meta["lcm_lora.phase_starts"], phases) : null;
  return { objective, sampler, gamma, steps: steps >= 1 && steps <= 1000 ? steps : (phased ? phases : 4), phases,
           phaseStarts, cfg, source: "metadata" };
}

// A metadata number as Python's float() / int() read decimal text (digits may be grouped by "_"); NaN for
// anything else (Python's "nan" / "inf" are no usable value either).
const DIGITS = "\\d(?:_?\\d)*";
const FLOAT_TEXT = new RegExp(`^\\s*[+-]?(${DIGITS}\\.?(${DIGITS})?|\\.${DIGITS})([eE][+-]?${DIGITS})?\\s*$`);
const INTEGER_TEXT = new RegExp(`^\\s*[+-]?${DIGITS}\\s*$`);
function numberText(text) {
  return typeof text === "string" && FLOAT_TEXT.test(text) ? Number(text.replace(/_/g, "")) : NaN;
}
function integerText(text) {
  return typeof text === "string" && INTEGER_TEXT.test(text) ? Number(text.replace(/_/g, "")) : NaN;
}

// lcm_lora.phase_starts ("0,15,30,41": a PCM adapter distilled on phases of other lengths, lcd.phase_starts), or
// null for the even split and for text that is not one start per phase, 0 first, increasing, on the 50-point grid
// (lcm_core/phased_timesteps.check_phase_starts; metadata stays advisory).
function readPhaseStarts(text, phases) {
  if (typeof text !== "string" || !text.trim()) return null;
  const parts = text.split(",").map((v) => v.trim());
  if (!parts.every((v) => /^[+-]?\d+$/.test(v))) return null;
  const starts = parts.map(Number);
  const ok = starts.length === phases && starts[0] === 0 && starts.every((v, i) => i === 0 || v > starts[i - 1])
    && starts[starts.length - 1] < 50;
  return ok ? starts : null;
}

// The recommended cfg of a "normal CFG" adapter (recipe cfg > 1: distilled without guidance), else null.
function normalCfg(recipe) {
  return typeof recipe?.cfg === "number" && recipe.cfg > 1 ? recipe.cfg : null;
}

// What is wrong with a sampler's cfg for `recipe`: guided adapters and adapters without metadata (null):
// cfg > MAX_CFG on every step; normal-CFG adapters: cfg <= 1 / cfg_steps 0 (unguided) or cfg > NORMAL_CFG_FACTOR × R.
function cfgProblems(s, recipe) {
  if (typeof s.cfg !== "number") return [];
  const r = normalCfg(recipe);
  if (r === null) return s.cfg > MAX_CFG && cfgOnEveryStep(s) ? [`cfg ${s.cfg} > ${MAX_CFG}`] : [];
  if (s.cfg <= 1) return [`cfg ${s.cfg} (unguided)`];
  if (s.cfgStepsInput && s.cfgSteps === 0) return [`cfg_steps 0 (unguided)`];
  const bound = NORMAL_CFG_FACTOR * r;
  return s.cfg > bound && cfgOnEveryStep(s) ? [`cfg ${s.cfg} > ${bound} (${NORMAL_CFG_FACTOR} × its cfg ${r})`] : [];
}

// The cfg a warning recommends for `recipe`.
function cfgAdvice(recipe) {
  const r = normalCfg(recipe);
  if (r === null) return "cfg 1-2 (higher cfg with a negative prompt: on the first steps only, cfg_steps)";
  return `cfg ≈ ${r} on every step, at most ${NORMAL_CFG_FACTOR * r} (distilled without guidance: real CFG, ` +
         "negative prompts work)";
}

// The timesteps a phased adapter samples at steps = phases (lcm_core/phased_timesteps._phase_tops); `starts`:
// a PCM adapter's own phase starts (edge = start × 20 − 1).
function phaseTops(family, phases, starts = null) {
  if (family === "pcm" && Array.isArray(starts)) {
    return [999, ...starts.slice(1).map((e) => Math.max(e * 20 - 1, 0)).reverse()];
  }
  const upper = [];
  for (let m = 1; m < phases; m++) {
    if (family === "pcm") upper.push(Math.max(Math.floor(m * (50 / phases)) * 20 - 1, 0)); // DDIM grid, k = 20
    else upper.push(m * Math.floor(1000 / phases) - 1);
  }
  return [999, ...upper.reverse()];
}

function adapterRecipe(name) {
  if (typeof name !== "string" || !name) return null;
  if (recipes.has(name)) return recipes.get(name);
  if (!fetching.has(name) && name.endsWith(".safetensors")) {
    fetching.add(name);
    api.fetchApi(`/view_metadata/loras?filename=${encodeURIComponent(name)}`)
      .then((r) => (r.ok ? r.json() : null))
      .catch(() => null)
      .then((meta) => {
        recipes.set(name, readRecipe(meta));
        fetching.delete(name);
        refreshWarnings();
      });
  }
  return null; // unknown yet: LCM, as for adapters without metadata
}

// The recipe an LCM-LoRA Loader gives its MODEL (as nodes/recipe_follow.resolve).
function loaderRecipe(node) {
  const choice = widgetValue(node, "sampling") ?? "auto";
  const stored = adapterRecipe(widgetValue(node, "lora_name"));
  if (choice === "auto") return stored ?? { objective: "lcm", sampler: "lcm", steps: 4, cfg: 1, source: "default" };
  if (stored && stored.objective === choice) return stored;
  if (PHASED.includes(choice)) {
    const phases = widgetValue(node, "phases") ?? DEFAULT_PHASES;
    return { objective: choice, sampler: "tcd", gamma: 0, steps: phases, phases, cfg: 1, source: "chosen" };
  }
  return { objective: choice, sampler: choice, gamma: choice === "tcd" ? 0.3 : null, steps: 4, cfg: 1, source: "chosen" };
}

// -- graph helpers -----------------------------------------------------------------------------
function getLink(graph, id) {
  if (id == null) return null;
  if (graph.links instanceof Map) return graph.links.get(id) ?? null;
  return graph.links?.[id] ?? null;
}

function inputOrigin(graph, node, name) {
  const input = node.inputs?.find((i) => i.name === name);
  const link = input ? getLink(graph, input.link) : null;
  return link ? graph.getNodeById(link.origin_id) : null;
}

function widgetValue(node, name) {
  const w = node.widgets?.find((x) => x.name === name);
  if (!w) return undefined;
  const input = node.inputs?.find((i) => i.name === name);
  if (input && input.link != null) return undefined; // driven by a link: value unknown here
  return w.value;
}

// Does the MODEL arriving at `node`'s input `name` come from an LCM-patched model or one that
// carries a TCD / PCM / TSCD recipe? -> { node, objective: "lcm" | "tcd" | "pcm" | "tscd", recipe } or null.
function lcmSource(graph, node, name = "model", seen = new Set()) {
  const origin = inputOrigin(graph, node, name);
  if (!origin || seen.has(origin.id)) return null;
  seen.add(origin.id);
  if (origin.mode === 2) return null; // muted: nothing reaches the sampler
  const type = origin.type ?? origin.comfyClass;
  if (origin.mode === 4 || type === "Reroute") {
    // bypassed: ComfyUI hands its first MODEL input to its MODEL output; a Reroute node passes its one input on
    const through = type === "Reroute" ? origin.inputs?.[0] : origin.inputs?.find((i) => i.type === "MODEL");
    return through ? lcmSource(graph, origin, through.name, seen) : null;
  }
  if (type === LOADER) {
    const recipe = loaderRecipe(origin);
    if (recipe.objective !== "lcm") return { node: origin, objective: recipe.objective, recipe };
    return widgetValue(origin, "patch_sampling") === false ? lcmSource(graph, origin, "model", seen)
      : { node: origin, objective: "lcm", recipe };
  }
  if (type === MERGE) {
    // as nodes/adapter_merge.py: the first adapter whose metadata records a recipe decides
    let first = null;
    for (let i = 1; i <= MAX_SLOTS; i++) {
      const recipe = adapterRecipe(widgetValue(origin, "adapter_" + i));
      if (recipe) {
        if (recipe.objective !== "lcm") return { node: origin, objective: recipe.objective, recipe };
        first = recipe; // an LCM recipe: its cfg (normal CFG or not) still counts
        break;
      }
    }
    return widgetValue(origin, "patch_sampling") === false ? lcmSource(graph, origin, "model", seen)
      : { node: origin, objective: "lcm", recipe: first };
  }
  if (type === "ModelSamplingDiscrete") {
    return widgetValue(origin, "sampling") === "lcm" ? { node: origin, objective: "lcm", recipe: null } : null;
  }
  if (origin.inputs?.some((i) => i.name === "model" && i.type === "MODEL")) {
    return lcmSource(graph, origin, "model", seen);
  }
  return null;
}

function isLcmSamplerName(name) {
  return typeof name === "string" && LCM_SAMPLER_NAMES.some((s) => name.toLowerCase().includes(s));
}

// Settings of a sampler-like node: {modelNode, modelInput, cfg, steps, samplerName, samplerIsLcm}
function samplerSettings(graph, node) {
  const type = node.type ?? node.comfyClass;
  if (type === "KSampler" || type === "KSamplerAdvanced") {
    const name = widgetValue(node, "sampler_name");
    return { model: [node, "model"], cfg: widgetValue(node, "cfg"), steps: widgetValue(node, "steps"),
             samplerName: name, samplerIsLcm: name === undefined ? true : isLcmSamplerName(name),
             schedule: { stock: widgetValue(node, "scheduler") ?? "its scheduler" } };
  }
  if (type === "LCMKSampler") {
    const cfgSteps = node.widgets?.some((w) => w.name === "cfg_steps") ? widgetValue(node, "cfg_steps") : EVERY_STEP;
    const mode = widgetValue(node, "mode") ?? "auto";
    return { model: [node, "model"], cfg: widgetValue(node, "cfg"), steps: widgetValue(node, "steps"),
             samplerName: mode, samplerIsLcm: true, ours: true, cfgSteps, cfgStepsInput: true,
             gamma: mode === "tcd" ? widgetValue(node, "gamma") : undefined, denoise: widgetValue(node, "denoise"),
             schedule: mode === "auto" ? { follows: true } : { lcmMode: mode } };
  }
  if (type === "SamplerCustom" || type === "SamplerCustomAdvanced") {
    let model = [node, "model"];
    let cfg = widgetValue(node, "cfg");
    let cfgSteps;
    let cfgStepsInput = false; // stock guiders: cfg on every step
    if (type === "SamplerCustomAdvanced") {
      const guider = inputOrigin(graph, node, "guider");
      if (!guider) return null;
      model = [guider, "model"];
      const gtype = guider.type ?? guider.comfyClass;
      cfg = gtype === "BasicGuider" ? 1 : widgetValue(guider, "cfg");
      if (gtype === GUIDER) {
        cfgStepsInput = true;
        cfgSteps = widgetValue(guider, "cfg_steps");
      }
    }
    const sampler = inputOrigin(graph, node, "sampler");
    let samplerName;
    let samplerIsLcm = true;
    let ours = false;
    let gamma;
    if (sampler) {
      const stype = sampler.type ?? sampler.comfyClass;
      ours = stype === "LCMSampler";
      if (ours) samplerName = widgetValue(sampler, "mode") ?? "auto";
      else if (stype === "KSamplerSelect") samplerName = widgetValue(sampler, "sampler_name");
      else samplerName = stype;
      if (ours && samplerName === "tcd") gamma = widgetValue(sampler, "gamma");
      samplerIsLcm = ours || isLcmSamplerName(samplerName);
    }
    const sigmas = inputOrigin(graph, node, "sigmas");
    const steps = sigmas ? widgetValue(sigmas, "steps") : undefined;
    let schedule = null; // unknown (no sigmas yet, or e.g. SplitSigmas): no phase-edge check
    let denoise;
    if (sigmas) {
      const sigType = sigmas.type ?? sigmas.comfyClass;
      if (sigType === "LCMScheduler") {
        schedule = { scheduler: widgetValue(sigmas, "schedule") ?? "lcm", phases: widgetValue(sigmas, "phases") ?? DEFAULT_PHASES,
                     phaseStarts: widgetValue(sigmas, "phase_starts") ?? "" };
        denoise = widgetValue(sigmas, "denoise");
      } else if (STOCK_SCHEDULERS.includes(sigType)) {
        schedule = { stock: sigType };
      }
    }
    return { model, cfg, steps, samplerName, samplerIsLcm, ours, cfgSteps, cfgStepsInput, gamma, schedule, denoise };
  }
  return null;
}

// Does cfg apply on every step? false when cfg_steps (LCM KSampler, LCM CFG Guider) limits it to the
// first steps — real CFG there is what makes a negative prompt work — or when its value is unknown (linked).
function cfgOnEveryStep(s) {
  if (!s.cfgStepsInput) return true; // stock samplers and guiders
  if (typeof s.cfgSteps !== "number") return false; // driven by a link: unknown here
  return typeof s.steps === "number" ? s.cfgSteps >= s.steps : s.cfgSteps >= EVERY_STEP;
}

function checkGraph(graph = app.graph) {
  const warnings = [];
  if (!graph?._nodes) return warnings;
  for (const node of graph._nodes) {
    if (node.mode === 2 || node.mode === 4) continue;
    const s = samplerSettings(graph, node);
    if (!s) continue;
    const source = lcmSource(graph, s.model[0], s.model[1]);
    if (!source) continue;
    const problems = cfgProblems(s, source.recipe);
    if (PHASED.includes(source.objective)) {
      const problems2 = phasedProblems(s, source.recipe, problems);
      if (problems2.length) {
        const r = source.recipe;
        const name = r.objective.toUpperCase();
        const starts = r.phaseStarts ? `, phase_starts ${r.phaseStarts.join(",")}` : "";
        const where = s.ours && s.schedule?.follows ? "" :
          ` — LCM KSampler in mode auto, or LCM Sampler (auto) + LCM Scheduler (schedule ${r.objective}, phases ${r.phases}${starts})`;
        warnings.push({ nodeId: node.id, nodeType: node.type, sourceId: source.node.id, objective: r.objective,
                        problems: problems2,
                        message: `${node.title || node.type} (#${node.id}) samples a ${name} adapter (#${source.node.id}, ` +
                                 `${r.phases} phases) with ${problems2.join(", ")}: a ${name} adapter jumps from phase edge ` +
                                 `to phase edge (${PAPERS[r.objective]}), so it wants the tcd sampler at gamma ${r.gamma ?? 0} on its ` +
                                 `phase edges${where}; steps = phases (${r.phases}: ${phaseTops(r.objective, r.phases, r.phaseStarts).join(", ")}), ` +
                                 `a divisor or a multiple of them; ${cfgAdvice(r)}.` });
      }
      continue;
    }
    // phase-edge sigmas for an adapter that is not phased: most likely a PCM / TSCD LoRA the loader treats as LCM / TCD
    const sched = s.schedule?.scheduler;
    if (PHASED.includes(sched)) {
      problems.push(`LCM Scheduler schedule ${sched} is for a ${sched.toUpperCase()} adapter (set the loader's sampling to ${sched})`);
    }
    if (source.objective === "tcd") {
      // TCD keeps improving with more steps: no step limit; it wants the tcd sampler.
      const isTcd = s.ours ? s.samplerName !== "lcm" : typeof s.samplerName === "string" && s.samplerName.toLowerCase().includes("tcd");
      if (s.samplerName !== undefined && !isTcd) problems.push(`sampler '${s.samplerName}' is not TCD`);
      if (problems.length) {
        warnings.push({ nodeId: node.id, nodeType: node.type, sourceId: source.node.id, objective: "tcd", problems,
                        message: `${node.title || node.type} (#${node.id}) samples a TCD adapter (#${source.node.id}) with ` +
                                 problems.join(", ") + `: a TCD adapter wants ${cfgAdvice(source.recipe)} and the tcd sampler ` +
                                 "(LCM KSampler or LCM Sampler, mode auto or tcd)." });
      }
      continue;
    }
    if (typeof s.steps === "number" && s.steps > MAX_STEPS) problems.push(`steps ${s.steps} > ${MAX_STEPS}`);
    if (!s.samplerIsLcm) problems.push(`sampler '${s.samplerName}' is not an LCM sampler`);
    if (problems.length) {
      warnings.push({ nodeId: node.id, nodeType: node.type, sourceId: source.node.id, objective: "lcm", problems,
                      message: `${node.title || node.type} (#${node.id}) samples an LCM-patched model (#${source.node.id}) with ` +
                               problems.join(", ") + `: LCM-LoRA wants 2-8 steps, ${cfgAdvice(source.recipe)} and the lcm sampler.` });
    }
  }
  return warnings;
}

// What a phased (PCM / TSCD) adapter's sampler does wrong: not TCD, γ other than the recipe's (0 unless the adapter
// records one, output.recommended_gamma), sigmas that are not its phase edges, a step count that is neither a
// divisor nor a multiple of its phases. `problems`: the cfg ones so far.
function phasedProblems(s, recipe, problems) {
  const out = [...problems];
  const phases = recipe.phases ?? DEFAULT_PHASES;
  const wantGamma = recipe.gamma ?? 0; // readRecipe: lcm_lora.recommended_gamma, else 0 for a phased objective
  const isTcd = s.ours ? s.samplerName !== "lcm" : typeof s.samplerName === "string" && s.samplerName.toLowerCase().includes("tcd");
  if (s.samplerName !== undefined && !isTcd) out.push(`sampler '${s.samplerName}' is not TCD`);
  else if (typeof s.gamma === "number" && s.gamma !== wantGamma) out.push(`gamma ${s.gamma} is not ${wantGamma}`);
  const sched = s.schedule;
  if (sched?.lcmMode) out.push(`mode ${sched.lcmMode} samples LCM timesteps, not the phase edges`);
  else if (sched?.stock) out.push(`${sched.stock} sigmas are not the phase edges`);
  else if (sched?.scheduler !== undefined && sched.scheduler !== recipe.objective) {
    out.push(`LCM Scheduler schedule ${sched.scheduler} is not ${recipe.objective}`);
  } else if (sched?.scheduler !== undefined && typeof sched.phases === "number" && sched.phases !== phases) {
    out.push(`LCM Scheduler phases ${sched.phases} is not ${phases}`);
  } else if (sched?.scheduler === "pcm" && typeof sched.phaseStarts === "string") {
    // as nodes/lcm_scheduler.read_phase_starts: empty → the even split; text that is not one start per phase is
    // an error of the node; starts that give the adapter's edges are the adapter's (the even split spelt out too)
    const text = sched.phaseStarts.trim();
    const given = text ? readPhaseStarts(text, phases) : null;
    if (text && given === null) {
      out.push(`LCM Scheduler phase_starts "${sched.phaseStarts}" is not ${phases} starts (0 first, increasing, below 50)`);
    } else if (phaseTops("pcm", phases, given).join(",") !== phaseTops("pcm", phases, recipe.phaseStarts).join(",")) {
      const want = recipe.phaseStarts ? recipe.phaseStarts.join(",") : "empty (PCM's even phases)";
      out.push(`LCM Scheduler phase_starts "${sched.phaseStarts}" is not the adapter's (${want})`);
    }
  }
  if (typeof s.steps === "number" && s.steps >= 1 && (sched?.follows || sched?.scheduler === recipe.objective)) {
    const denoise = typeof s.denoise === "number" && s.denoise > 0 ? s.denoise : 1;
    const total = Math.trunc(s.steps / denoise); // the schedule of int(steps / denoise) steps (phased_timesteps)
    const at = denoise < 1 ? `(${total} at denoise ${denoise}) ` : "";
    const starts = sched?.follows ? recipe.phaseStarts : readPhaseStarts(sched?.phaseStarts ?? "", phases);
    if (phases % total !== 0 && total % phases !== 0) {
      out.push(`steps ${s.steps} ${at}is neither a divisor nor a multiple of ${phases} phases`);
    } else if (phasedTimesteps(recipe.objective, total, phases, starts) === null) {
      out.push(`steps ${s.steps} ${at}do not fit between the phase edges (${total / phases} per phase)`);
    }
  }
  return out;
}

// The timesteps of a `total`-step schedule on a phased adapter's edges (lcm_core/phased_timesteps.phased_timesteps at
// denoise 1): the edges, every (phases / total)-th edge, or each phase cut into equal parts (PCM: on the 50-point
// DDIM grid, k = 20); null where a multiple does not fit (a phase with fewer grid points than steps: the nodes then
// sample evenly spaced timesteps, which the adapter was not trained on).
function phasedTimesteps(family, total, phases, starts = null) {
  const tops = phaseTops(family, phases, starts);
  if (total === phases) return tops;
  if (phases % total === 0) return tops.filter((_, i) => i % (phases / total) === 0);
  const per = total / phases;
  const out = [];
  tops.forEach((top, m) => {
    const low = m + 1 < tops.length ? tops[m + 1] : 0;
    if (family === "pcm") {
      const topI = Math.floor((top + 1) / 20) - 1;
      const lowI = Math.floor((low + 1) / 20) - 1; // low 0 → −1: below the grid
      for (let j = 0; j < per; j++) out.push((topI - Math.floor((j * (topI - lowI)) / per) + 1) * 20 - 1);
    } else {
      for (let j = 0; j < per; j++) out.push(top - Math.floor((j * (top - low)) / per));
    }
  });
  return new Set(out).size === out.length ? out : null;
}

// -- warnings: badge + toast ---------------------------------------------------------------------
let lastSignature = "";
const shownToasts = new Set();

function toast(detail) {
  const t = app.extensionManager?.toast;
  if (t?.add) t.add({ severity: "warn", summary: "LCM-LoRA", detail, life: 8000 });
  else console.warn("[LCM-LoRA]", detail);
}

function refreshWarnings() {
  const graph = app.graph;
  if (!graph?._nodes) return [];
  const warnings = checkGraph(graph);
  const byNode = new Map(warnings.map((w) => [w.nodeId, w]));
  let changed = false;
  for (const node of graph._nodes) {
    const w = byNode.get(node.id) ?? null;
    const before = node.__lcmWarning?.message ?? null;
    if ((w?.message ?? null) !== before) {
      node.__lcmWarning = w;
      changed = true;
    }
  }
  const signature = warnings.map((w) => w.message).join("\n");
  if (signature !== lastSignature) {
    for (const w of warnings) {
      if (!shownToasts.has(w.message)) {
        shownToasts.add(w.message);
        toast(w.message);
      }
    }
    lastSignature = signature;
  }
  if (changed) graph.setDirtyCanvas?.(true, true);
  return warnings;
}

function drawBadge(node, ctx) {
  const w = node.__lcmWarning;
  if (!w || node.flags?.collapsed) return;
  const text = "⚠ LCM: " + w.problems.join(", ");
  ctx.save();
  ctx.font = "bold 12px sans-serif";
  const width = ctx.measureText(text).width + 12;
  const titleHeight = globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  const x = 0;
  const y = -titleHeight - 22;
  ctx.fillStyle = "#c77800";
  ctx.beginPath();
  if (ctx.roundRect) ctx.roundRect(x, y, width, 18, 5);
  else ctx.rect(x, y, width, 18);
  ctx.fill();
  ctx.fillStyle = "#fff";
  ctx.textBaseline = "middle";
  ctx.fillText(text, x + 6, y + 9);
  ctx.restore();
}

// -- merge node: slots on demand, report ----------------------------------------------------------
function slotWidgets(node, i) {
  return ["adapter_", "weight_"].map((p) => node.widgets?.find((w) => w.name === p + i)).filter(Boolean);
}

const HIDDEN_SIZE = () => [0, -4];

// Returns true when the widget's state had to change. Checks the live state (the front end may
// rebuild widget objects while it configures a node), not a remembered flag.
function setWidgetVisible(widget, visible) {
  const isHidden = widget.hidden === true && widget.computeSize === HIDDEN_SIZE;
  if (visible && (widget.hidden || widget.computeSize === HIDDEN_SIZE)) {
    widget.hidden = false;
    if (widget.computeSize === HIDDEN_SIZE) widget.computeSize = widget.__lcmOrigComputeSize;
    delete widget.__lcmOrigComputeSize;
    return true;
  }
  if (!visible && !isHidden) {
    if (widget.computeSize !== HIDDEN_SIZE) widget.__lcmOrigComputeSize = widget.computeSize;
    widget.hidden = true;
    widget.computeSize = HIDDEN_SIZE;
    return true;
  }
  return false;
}

function visibleSlots(node) {
  let last = 2;
  for (let i = 3; i <= MAX_SLOTS; i++) {
    const a = node.widgets?.find((w) => w.name === "adapter_" + i);
    if (a && a.value && a.value !== "None") last = i;
  }
  return Math.min(MAX_SLOTS, last + 1);
}

// Chain our slot update onto an adapter combo's callback (once per widget object: the front end
// may rebuild widgets while it configures a node, so this is re-checked on every update).
function watchAdapterWidgets(node) {
  for (let i = 3; i <= MAX_SLOTS; i++) {
    const a = node.widgets?.find((w) => w.name === "adapter_" + i);
    if (!a || a.__lcmWatched) continue;
    const cb = a.callback;
    a.callback = function () {
      const r = cb?.apply(this, arguments);
      updateMergeSlots(node);
      return r;
    };
    a.__lcmWatched = true;
  }
}

function updateMergeSlots(node) {
  watchAdapterWidgets(node);
  const shown = visibleSlots(node);
  let changed = false;
  for (let i = 3; i <= MAX_SLOTS; i++) {
    for (const w of slotWidgets(node, i)) {
      if (setWidgetVisible(w, i <= shown)) changed = true;
    }
  }
  if (changed) {
    const size = node.computeSize();
    node.setSize([Math.max(node.size[0], size[0]), size[1] + (node.__lcmReportLines?.length ?? 0) * 15]);
    node.setDirtyCanvas?.(true, true);
  }
  return shown;
}

// -- inputs a setting ignores are hidden ------------------------------------------------------------
// gamma: only mode tcd uses it (auto takes the recipe's γ); eta: tcd and auto; rank: merge methods svd and fuse
// (fuse's adapter output with LyCORIS inputs is the svd merge at that rank);
// phases: the loader's sampling / the scheduler's schedule pcm / tscd; phase_starts: schedule pcm;
// original_steps: schedule lcm.
const IGNORED = {
  LCMKSampler: (node) => ({ gamma: widgetValue(node, "mode") !== "tcd", eta: widgetValue(node, "mode") === "lcm" }),
  [LOADER]: (node) => ({ phases: !PHASED.includes(widgetValue(node, "sampling")) }),
  LCMScheduler: (node) => ({ phases: !PHASED.includes(widgetValue(node, "schedule") ?? "lcm"),
                             phase_starts: (widgetValue(node, "schedule") ?? "lcm") !== "pcm",
                             original_steps: PHASED.includes(widgetValue(node, "schedule")) }),
  LCMSampler: (node) => ({ gamma: widgetValue(node, "mode") !== "tcd", eta: widgetValue(node, "mode") === "lcm" }),
  [MERGE]: (node) => ({ rank: widgetValue(node, "method") === "concat" }),
};

// Chain the update onto the mode / method combo's callback (re-checked every time: the front end
// may rebuild widget objects while it configures a node).
function watchIgnoredInputs(node) {
  for (const name of ["mode", "method", "sampling", "schedule"]) {
    const w = node.widgets?.find((x) => x.name === name);
    if (!w || w.__lcmIgnoredWatch) continue;
    const cb = w.callback;
    w.callback = function () {
      const r = cb?.apply(this, arguments);
      updateIgnoredInputs(node);
      return r;
    };
    w.__lcmIgnoredWatch = true;
  }
}

function updateIgnoredInputs(node) {
  const rule = IGNORED[node.type ?? node.comfyClass];
  if (!rule) return false;
  watchIgnoredInputs(node);
  let changed = false;
  for (const [name, hide] of Object.entries(rule(node))) {
    const w = node.widgets?.find((x) => x.name === name);
    if (w && setWidgetVisible(w, !hide)) changed = true;
  }
  if (changed) {
    const size = node.computeSize();
    node.setSize([Math.max(node.size[0], size[0]), size[1] + (node.__lcmReportLines?.length ?? 0) * 15]);
    node.setDirtyCanvas?.(true, true);
  }
  return changed;
}

function hiddenWidgets(node) {
  return (node.widgets ?? []).filter((w) => w.hidden === true).map((w) => w.name);
}

function drawReport(node, ctx) {
  const lines = node.__lcmReportLines;
  if (!lines?.length || node.flags?.collapsed) return;
  ctx.save();
  ctx.font = "12px monospace";
  ctx.fillStyle = "#9fd39f";
  let y = node.size[1] - lines.length * 15 + 4;
  for (const line of lines) {
    ctx.fillText(line, 8, y + 8);
    y += 15;
  }
  ctx.restore();
}

// -- registration ---------------------------------------------------------------------------------
const extension = {
  name: EXT_NAME,
  async setup() {
    setInterval(() => {
      refreshWarnings();
      for (const node of app.graph?._nodes ?? []) {
        if ((node.type ?? node.comfyClass) === MERGE) updateMergeSlots(node);
        updateIgnoredInputs(node);
      }
    }, 1000);
  },
  // ComfyUI's Refresh (and a save or a finished training run, which call it): the loras folder may have new or
  // replaced files, so their recipes are read again (the nodes' own cache follows each file's mtime and size)
  async refreshComboInNodes() {
    recipes.clear();
    refreshWarnings();
  },
  // a node restored from a saved workflow: its widget values are in place now
  loadedGraphNode(node) {
    if ((node.type ?? node.comfyClass) === MERGE) updateMergeSlots(node);
    updateIgnoredInputs(node);
  },
  afterConfigureGraph() {
    for (const node of app.graph?._nodes ?? []) {
      if ((node.type ?? node.comfyClass) === MERGE) updateMergeSlots(node);
      updateIgnoredInputs(node);
    }
  },
  async nodeCreated(node) {
    const origDraw = node.onDrawForeground;
    node.onDrawForeground = function (ctx) {
      const r = origDraw?.apply(this, arguments);
      drawBadge(this, ctx);
      if ((this.type ?? this.comfyClass) === MERGE) drawReport(this, ctx);
      return r;
    };
    const type = node.type ?? node.comfyClass;
    if (IGNORED[type]) setTimeout(() => updateIgnoredInputs(node), 0);
    if (type === MERGE) {
      const origConfigure = node.onConfigure;
      node.onConfigure = function () {
        const r = origConfigure?.apply(this, arguments);
        setTimeout(() => updateMergeSlots(this), 0); // after the front end has restored the values
        return r;
      };
      const origBackground = node.onDrawBackground;
      node.onDrawBackground = function () {
        updateMergeSlots(this); // before the widgets are drawn
        return origBackground?.apply(this, arguments);
      };
      setTimeout(() => updateMergeSlots(node), 0);
    }
  },
  // "executed" messages reach node.onExecuted; hook the prototypes (the front end manages the
  // instances' handlers itself).
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name === MERGE) {
      const orig = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        const r = orig?.apply(this, arguments);
        const text = message?.text?.[0];
        if (typeof text === "string") {
          this.__lcmReportLines = text.split("\n");
          const size = this.computeSize();
          this.setSize([Math.max(this.size[0], size[0]), size[1] + this.__lcmReportLines.length * 15]);
          this.setDirtyCanvas?.(true, true);
        }
        return r;
      };
    }
    if (nodeData?.name === "LCMAdapterSave") {
      const orig = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        const r = orig?.apply(this, arguments);
        if (message?.lcm_saved?.length) {
          app.refreshComboInNodes?.();
          toast(`saved ${message.lcm_saved[0]} to the loras folder`);
        }
        return r;
      };
    }
  },
};

globalThis.LCMLoRA = { checkGraph, cfgOnEveryStep, refreshWarnings, updateMergeSlots, visibleSlots, updateIgnoredInputs, hiddenWidgets,
                       adapterRecipe, readRecipe, recipes, phaseTops, samplerSettings, lcmSource, MAX_CFG, MAX_STEPS,
                       cfgProblems, cfgAdvice, phasedProblems, phasedTimesteps, NORMAL_CFG_FACTOR };

// The pack may be registered twice when its folder name differs from the project name
// (ComfyUI serves both WEB_DIRECTORY and pyproject's [tool.comfy] web); register once.
if (!globalThis.__lcmLoraExtensionRegistered) {
  globalThis.__lcmLoraExtensionRegistered = true;
  app.registerExtension(extension);
}
