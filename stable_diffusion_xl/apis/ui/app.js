// The try-it page. It offers what the deployment's status says it has, POSTs the form to the same HTTP API
// every client calls (flat Instill JSON), follows the call's server-sent progress events, and keeps the last
// generations in local storage. It checks no value itself: the API's own errors are shown beside their fields.
"use strict";

const API = new URL(".", document.baseURI); // the application's route: <base> is set to it by the server
const HISTORY_KEY = "sdxl-history";
const HISTORY_LENGTH = 8;
const THUMBNAIL_SIZE = 128; // longest side of a history thumbnail, in pixels
const API_KEY = "sdxl-api-key"; // in session storage only: gone when the tab is closed
const NUMBER_FIELDS = ["n", "seed", "steps", "guidance-scale"];
const STAGES = { base: "Base", refiner: "Refiner" }; // as progress events name them
const STAGE_NAMES = { // usage.seconds' stages, in words
  text_encoders: "text encoders", vae_decode: "VAE decode", encode: "encoding", safety_checker: "safety check",
};

const $ = (id) => document.getElementById(id);
let running = null; // the AbortController of the call under way

function element(tag, properties = {}, ...children) {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...children);
  return node;
}

// --- What the deployment offers ---

async function loadStatus() {
  let status;
  try {
    status = await (await fetch(API)).json();
  } catch {
    $("status").textContent = "The model did not answer. Reload this page once it is running.";
    return;
  }
  const largest = Math.max(...Object.values(status.sizes).flat());
  const shapes = Object.entries(status.sizes).map(([ratio, size]) => shape(ratio, size, largest));
  $("aspect-ratio").replaceChildren(...shapes);
  $("scheduler").replaceChildren(...status.schedulers.map((name) => element("option", { value: name }, name)));
  $("scheduler-field").hidden = status.schedulers.length === 0;
  const tokens = status.loras.trigger_tokens ?? {};
  $("lora").replaceChildren(...status.loras.available.map((name) => element("label", { className: "check" },
    element("input", { type: "checkbox", name: "lora", value: name }), ` ${name}`,
    tokens[name] ? element("span", { className: "token" }, ` (trigger word: ${tokens[name]})`) : "")));
  $("lora-field").hidden = status.loras.available.length === 0;
  $("key-field").hidden = !status.api_key_required;
  $("train-panel").hidden = !status.training?.enabled;
  $("authorization").value = sessionStorage.getItem(API_KEY) ?? "";
  $("status").textContent = status.demo_weights ? "Ready, with the demo weights: their images are noise." : "Ready.";
  $("generate").disabled = false;
}

// One aspect ratio as a radio button, drawn to its proportions (sized from script: the page allows no inline style).
function shape(ratio, [width, height], largest) {
  const box = element("span", { className: "box" });
  box.style.width = `${(3 * width) / largest}rem`;
  box.style.height = `${(3 * height) / largest}rem`;
  const input = element("input", { type: "radio", name: "aspect-ratio", value: ratio, checked: ratio === "1:1" });
  return element("label", { className: "shape" }, input, box, element("span", {}, ratio),
    element("span", { className: "size" }, `${width}×${height}`));
}

// --- The request ---

function requestBody() {
  const ratio = document.querySelector("[name=aspect-ratio]:checked").value;
  const body = { prompt: $("prompt").value, "aspect-ratio": ratio };
  if ($("negative-prompt").value) body["negative-prompt"] = $("negative-prompt").value;
  for (const name of NUMBER_FIELDS) setNumber(body, name);
  body.refiner = $("refiner").checked;
  if (body.refiner) setNumber(body, "high-noise-frac");
  if (!$("scheduler-field").hidden) body.scheduler = $("scheduler").value;
  const loras = [...document.querySelectorAll("[name=lora]:checked")].map((box) => box.value);
  if (loras.length) {
    body.lora = loras;
    setNumber(body, "lora-scale");
  }
  return body;
}

// An empty field takes the API's default; text that is no number is sent as it is, for the API to name.
function setNumber(body, name) {
  const text = $(name).value.trim();
  if (text) body[name] = Number.isFinite(Number(text)) ? Number(text) : text;
}

function randomSeed() {
  return crypto.getRandomValues(new Uint32Array(1))[0] || 1; // 0 would ask the API to draw one we never see
}

// --- A call ---

// The API key as the routes ask for it, when one is given.
function keyHeaders() {
  return $("authorization").value ? { Authorization: `Bearer ${$("authorization").value}` } : {};
}

async function generate(event) {
  event.preventDefault();
  clearErrors();
  if (!$("keep-seed").checked) $("seed").value = randomSeed();
  const body = requestBody();
  const headers = { "Content-Type": "application/json", Accept: "text/event-stream", ...keyHeaders() };
  running = new AbortController();
  setRunning(true);
  markStale();
  showProgress({ stage: "waiting" });
  $("request-id").textContent = "";
  let succeeded = false;
  try {
    const response = await fetch(API, { method: "POST", headers, body: JSON.stringify(withEdit(body)),
                                         signal: running.signal });
    const requestId = response.headers.get("x-request-id"); // Ray Serve's id of the call in its logs
    if (requestId) $("request-id").textContent = `Request id: ${requestId}`;
    if (!response.ok) {
      await showRejection(response);
      $("progress-text").textContent = "Not generated: see the message in the form.";
      return;
    }
    const [output] = await follow(response);
    showResults(output);
    succeeded = true;
    await remember(body, output);
  } catch (error) {
    if (error.name === "AbortError") {
      const bar = $("progress");
      $("progress-text").textContent = bar.hasAttribute("value") ? `Cancelled at step ${bar.value} of ${bar.max}.`
        : "Cancelled before the first step.";
    } else {
      $("progress-text").textContent = "Failed.";
      showError("form", error.message);
    }
  } finally {
    running = null;
    setRunning(false);
    if (!succeeded) stopProgress();
  }
}

// A call that brought no images leaves the bar still: where it got to, or empty (never the waiting animation).
function stopProgress() {
  const bar = $("progress");
  if (!bar.hasAttribute("value")) bar.value = 0;
}

// Images still shown are an earlier call's: dimmed, and said so, until new ones replace them.
function markStale() {
  if (!$("results").children.length) return;
  $("results").classList.add("stale");
  $("timings").textContent = "The images above are from an earlier request.";
}

function setRunning(on) {
  $("generate").disabled = on;
  $("cancel").disabled = !on;
  $("results").setAttribute("aria-busy", on);
}

// The call's events until its result: progress moves the bar, an error ends the call.
async function follow(response) {
  for await (const { name, data } of serverSentEvents(response)) {
    if (name === "progress") showProgress(data);
    else if (name === "result") return data;
    else if (name === "error") throw new Error(data.error);
  }
  throw new Error("the connection closed before the images came");
}

// Server-sent events read from a fetch body (EventSource cannot POST); each event's data is one line of JSON.
async function* serverSentEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const lines = buffer.slice(0, end).split("\n");
      buffer = buffer.slice(end + 2);
      const field = (key) => lines.find((line) => line.startsWith(`${key}:`))?.slice(key.length + 1).trim();
      yield { name: field("event"), data: JSON.parse(field("data")) };
    }
  }
}

function showProgress({ stage, step, steps }) {
  const bar = $("progress");
  if (stage in STAGES) {
    bar.max = steps;
    bar.value = step;
    $("progress-text").textContent = `${STAGES[stage]}: step ${step} of ${steps}`;
  } else {
    bar.removeAttribute("value"); // indeterminate while the call waits for the engine or encodes the prompt
    $("progress-text").textContent = "Waiting for the engine…";
  }
}

// --- Errors, beside the field the API names ---

async function showRejection(response) {
  const text = await response.text();
  let error;
  try {
    error = JSON.parse(text);
  } catch {
    error = { error: `The server answered ${response.status}: ${text.slice(0, 200)}` };
  }
  if (error.field === "authorization") {
    error.error = $("authorization").value ? "This is not the deployment's API key."
      : "This deployment needs its API key.";
  }
  showError(error.field, error.error);
}

// The API's message in the page's words: without the field's name (it stands beside the field), as a sentence.
function showError(field, message) {
  const input = $(field);
  const place = $(`${field}-error`) ?? $("form-error");
  if (place.id === `${field}-error`) message = message.replace(`${field}: `, "");
  place.textContent = `${message.charAt(0).toUpperCase()}${message.slice(1)}${message.endsWith(".") ? "" : "."}`;
  if (place.id !== "form-error") {
    // A group (aspect ratio, adapters) is focused at its checked control.
    const control = input.matches("input, textarea, select, canvas") ? input
      : input.querySelector("input:checked") ?? input.querySelector("input");
    control.setAttribute("aria-invalid", "true");
    control.focus();
  }
}

function clearErrors() {
  for (const place of document.querySelectorAll(".error")) place.textContent = "";
  for (const input of document.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
}

// --- Results ---

function showResults(output) {
  const usage = output.metadata.usage;
  const count = output.data.choices.length;
  $("results").classList.remove("stale");
  $("results").replaceChildren(...output.data.choices.map((choice, index) =>
    figure(choice, usage.seeds[index], `Image ${index + 1} of ${count}`)));
  const seconds = Object.entries(usage.seconds).map(([stage, s]) => `${STAGE_NAMES[stage] ?? stage} ${s.toFixed(2)}`);
  $("timings").textContent = `${usage.width}×${usage.height}. Seconds: ${seconds.join(", ")}.`;
  $("progress-text").textContent = `Done: ${count} ${count === 1 ? "image" : "images"}.`;
  showMode(usage);
}

function figure(choice, seed, name) {
  const filtered = choice["finish-reason"] === "content_filtered";
  const reuse = element("button", { type: "button", className: "reuse" }, "Reuse seed");
  reuse.setAttribute("aria-label", `Reuse seed ${seed}`);
  reuse.addEventListener("click", () => reuseSeed(seed));
  const download = element("a", { href: choice.image, download: `sdxl-${seed}.jpg` }, "Download");
  download.setAttribute("aria-label", `Download the image of seed ${seed}`);
  return element("figure", { className: "image" },
    element("img", { src: choice.image, alt: `${name}, seed ${seed}` }),
    element("figcaption", {}, `Seed ${seed}${filtered ? " (withheld by the safety checker)" : ""}`),
    element("div", { className: "inline" }, reuse, download));
}

function reuseSeed(seed) {
  $("seed").value = seed;
  $("keep-seed").checked = true;
  $("seed").focus();
}

// --- History, in local storage: small thumbnails, so that a few generations fit in its few megabytes ---

function readHistory() {
  try {
    return JSON.parse(localStorage.getItem(HISTORY_KEY)) ?? [];
  } catch {
    return [];
  }
}

// `settings` as sent, to put back into the form; `usage` says what ran, defaults included.
async function remember(settings, output) {
  const usage = output.metadata.usage;
  const thumbnails = await Promise.all(output.data.choices.map((choice) => thumbnail(choice.image)));
  const entries = [{ settings, usage, thumbnails }, ...readHistory()].slice(0, HISTORY_LENGTH);
  // A full storage drops the oldest entries, never the newest.
  while (entries.length) {
    try {
      localStorage.setItem(HISTORY_KEY, JSON.stringify(entries));
      break;
    } catch {
      entries.pop();
    }
  }
  showHistory();
}

async function thumbnail(source) {
  const image = new Image();
  image.src = source;
  await image.decode();
  const scale = Math.min(1, THUMBNAIL_SIZE / Math.max(image.width, image.height));
  const width = Math.round(image.width * scale), height = Math.round(image.height * scale);
  const canvas = element("canvas", { width, height });
  canvas.getContext("2d").drawImage(image, 0, 0, width, height);
  return canvas.toDataURL("image/jpeg", 0.8);
}

function showHistory() {
  $("history").replaceChildren(...readHistory().map(({ settings, usage, thumbnails }) => {
    const use = element("button", { type: "button" }, "Use these settings");
    use.addEventListener("click", () => fillForm(settings));
    return element("li", { className: "card" },
      element("div", { className: "thumbnails" },
        ...thumbnails.map((source, index) => element("img", { src: source, alt: `Seed ${usage.seeds[index]}` }))),
      element("p", { className: "prompt" }, settings.prompt),
      element("p", { className: "help" }, summary(settings, usage)),
      use);
  }));
}

function summary(settings, usage) {
  const parts = [`${settings["aspect-ratio"]} (${usage.width}×${usage.height})`, `seeds ${usage.seeds.join(", ")}`,
                 `${usage.steps} steps`, `guidance ${usage["guidance-scale"]}`, usage.scheduler,
                 usage.refiner ? `refiner from ${usage["high-noise-frac"]}` : "no refiner"];
  if (usage.mode && usage.mode !== TEXT_TO_IMAGE) parts[0] = `${usage.mode} (${usage.width}×${usage.height})`;
  const adapters = usage.lora.map((name, index) => `${name} × ${usage["lora-scale"][index]}`);
  if (adapters.length) parts.push(`LoRA ${adapters.join(", ")}`);
  if (settings["negative-prompt"]) parts.push(`not: ${settings["negative-prompt"]}`);
  return parts.join(" · ");
}

// A past generation's settings back in the form; what it left out goes back to the API's default.
function fillForm(settings) {
  for (const name of ["prompt", "negative-prompt", ...NUMBER_FIELDS, "high-noise-frac", "lora-scale"]) {
    $(name).value = settings[name] ?? "";
  }
  document.querySelector(`[name=aspect-ratio][value="${settings["aspect-ratio"]}"]`).checked = true;
  $("refiner").checked = settings.refiner;
  if (settings.scheduler) $("scheduler").value = settings.scheduler;
  for (const box of document.querySelectorAll("[name=lora]")) box.checked = settings.lora?.includes(box.value) ?? false;
  $("keep-seed").checked = true;
  $("refiner").dispatchEvent(new Event("change"));
  $("prompt").focus();
}

// --- Edit mode (image-to-image and inpainting): begin ---
// A picture to start from and a mask painted over it, in the picture's own pixels (white: redraw, black: keep),
// sent with the request as data URIs ("image", "mask") with its "strength". No paint sends no mask: the whole
// picture is redrawn as far as the strength says (image-to-image). Usage says which mode ran, at which size.

const TEXT_TO_IMAGE = "text-to-image";
const LARGEST_PICTURE = 2048; // longest side painted and sent as chosen; a larger picture is sent scaled to it
const TINT = "rgb(255, 0, 128)"; // the painted strokes, shown half transparent over the picture
const edit = { image: null, mask: null, tint: null, painted: false, brush: { x: 0, y: 0 }, spaceDown: false,
               pointerDown: false };

// With a picture the aspect ratio is the picture's: the shapes are disabled (still shown, and kept for the
// history).
function usePictureShape(on) {
  $("aspect-ratio").closest("fieldset").disabled = on;
}

async function choosePicture() {
  const [file] = $("image").files;
  if (!file) return removePicture();
  usePictureShape(true);
  const chosen = await readDataUri(file);
  const picture = new Image();
  picture.src = chosen;
  try {
    await picture.decode();
  } catch { // not a picture this browser can show: sent as it is, for the API to name what is wrong with it
    Object.assign(edit, { image: chosen, mask: null, tint: null, painted: false });
    $("edit-tools").hidden = true;
    return;
  }
  const scale = Math.min(1, LARGEST_PICTURE / Math.max(picture.naturalWidth, picture.naturalHeight));
  const width = Math.round(picture.naturalWidth * scale), height = Math.round(picture.naturalHeight * scale);
  const shown = $("edit-picture");
  Object.assign(shown, { width, height });
  shown.getContext("2d").drawImage(picture, 0, 0, width, height);
  Object.assign($("mask"), { width, height });
  edit.image = scale < 1 ? shown.toDataURL("image/png") : chosen;
  edit.mask = element("canvas", { width, height });
  edit.tint = element("canvas", { width, height });
  edit.brush = { x: Math.round(width / 2), y: Math.round(height / 2) };
  const longest = Math.max(width, height);
  Object.assign($("brush-size"), { max: Math.max(8, Math.round(longest / 4)), value: Math.max(2, Math.round(longest / 16)) });
  $("edit-tools").hidden = false;
  clearMask();
}

function readDataUri(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.addEventListener("load", () => resolve(reader.result));
    reader.addEventListener("error", () => reject(reader.error));
    reader.readAsDataURL(file);
  });
}

function removePicture() {
  $("image").value = "";
  Object.assign(edit, { image: null, mask: null, tint: null, painted: false });
  $("edit-tools").hidden = true;
  $("mode-used").textContent = "";
  usePictureShape(false);
}

function clearMask() {
  const mask = edit.mask.getContext("2d");
  mask.fillStyle = "black";
  mask.fillRect(0, 0, edit.mask.width, edit.mask.height);
  edit.tint.getContext("2d").clearRect(0, 0, edit.tint.width, edit.tint.height);
  edit.painted = false;
  drawOverlay();
}

// A stroke from `from` to `to` (a dab where they are one point), on the mask and on its tinted copy.
function paint(from, to) {
  for (const [canvas, colour] of [[edit.mask, "white"], [edit.tint, TINT]]) {
    const context = canvas.getContext("2d");
    Object.assign(context, { strokeStyle: colour, lineWidth: Number($("brush-size").value), lineCap: "round" });
    context.beginPath();
    context.moveTo(from.x, from.y);
    context.lineTo(to.x, to.y);
    context.stroke();
  }
  edit.painted = true;
  drawOverlay();
}

// The painted strokes over the picture, and the brush as a ring where it is; said in words unless `quietly` (a
// pointer hovering, which would flood a screen reader).
function drawOverlay(quietly = false) {
  const overlay = $("mask"), context = overlay.getContext("2d");
  context.clearRect(0, 0, overlay.width, overlay.height);
  context.globalAlpha = 0.5;
  context.drawImage(edit.tint, 0, 0);
  context.globalAlpha = 1;
  const radius = Number($("brush-size").value) / 2, { x, y } = edit.brush;
  context.lineWidth = Math.max(1, overlay.width / 400);
  for (const colour of ["white", "black"]) {
    context.strokeStyle = colour;
    context.beginPath();
    context.arc(x, y, colour === "white" ? radius : radius + context.lineWidth, 0, 2 * Math.PI);
    context.stroke();
  }
  if (quietly) return;
  $("brush-at").textContent = `Brush at ${x}, ${y} of ${overlay.width}×${overlay.height}, size ${2 * radius}` +
    (edit.painted ? "; some of the picture is painted to be redrawn." : "; nothing painted yet.");
}

// Where a pointer event is, in the picture's pixels (the canvas is shown scaled).
function pointerAt(event) {
  const overlay = $("mask"), box = overlay.getBoundingClientRect();
  return { x: Math.round(((event.clientX - box.left) * overlay.width) / box.width),
           y: Math.round(((event.clientY - box.top) * overlay.height) / box.height) };
}

function moveBrush(to, painting, quietly = false) {
  const from = edit.brush;
  edit.brush = { x: Math.min(Math.max(to.x, 0), $("mask").width), y: Math.min(Math.max(to.y, 0), $("mask").height) };
  if (painting) paint(from, edit.brush);
  else drawOverlay(quietly);
}

const ARROWS = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };

function paintWithKeys(event) {
  const size = $("brush-size");
  if (event.key in ARROWS) {
    const [dx, dy] = ARROWS[event.key], step = Math.max(2, Number(size.value) / 2) * (event.shiftKey ? 4 : 1);
    moveBrush({ x: Math.round(edit.brush.x + dx * step), y: Math.round(edit.brush.y + dy * step) }, edit.spaceDown);
  } else if (event.key === " ") {
    if (!edit.spaceDown) paint(edit.brush, edit.brush);
    edit.spaceDown = true;
  } else if (event.key === "+" || event.key === "=" || event.key === "-") {
    size.value = Number(size.value) + (event.key === "-" ? -1 : 1) * Math.max(1, Math.round(size.value / 8));
    drawOverlay();
  } else {
    return;
  }
  event.preventDefault(); // the page does not scroll under the brush
}

// The request as sent: with a picture, its image, mask and strength, and no aspect ratio (the picture's is used).
function withEdit(body) {
  if (!edit.image) return body;
  const sent = { ...body, image: edit.image };
  delete sent["aspect-ratio"];
  if (edit.painted) sent.mask = edit.mask.toDataURL("image/png");
  setNumber(sent, "strength");
  return sent;
}

function showMode(usage) {
  $("mode-used").textContent = usage.mode && usage.mode !== TEXT_TO_IMAGE
    ? `Mode: ${usage.mode}, at ${usage.width}×${usage.height}.` : "";
}

$("image").addEventListener("change", choosePicture);
$("remove-picture").addEventListener("click", removePicture);
$("clear-mask").addEventListener("click", clearMask);
$("brush-size").addEventListener("input", () => drawOverlay());
$("mask").addEventListener("keydown", paintWithKeys);
$("mask").addEventListener("keyup", (event) => { if (event.key === " ") edit.spaceDown = false; });
$("mask").addEventListener("blur", () => { edit.spaceDown = false; });
$("mask").addEventListener("pointerdown", (event) => {
  $("mask").setPointerCapture(event.pointerId);
  edit.pointerDown = true;
  edit.brush = pointerAt(event);
  paint(edit.brush, edit.brush);
});
$("mask").addEventListener("pointermove", (event) => moveBrush(pointerAt(event), edit.pointerDown, true));
for (const name of ["pointerup", "pointercancel"]) {
  $("mask").addEventListener(name, () => { edit.pointerDown = false; });
}
// --- Edit mode: end ---

// --- Wiring ---

$("form").addEventListener("submit", generate);
$("cancel").addEventListener("click", () => running?.abort()); // the server stops the generation at its next step
$("random-seed").addEventListener("click", () => {
  $("seed").value = randomSeed();
  $("keep-seed").checked = true;
});
$("seed").addEventListener("input", () => { $("keep-seed").checked = true; }); // a typed seed is meant to be used
$("refiner").addEventListener("change", () => { $("high-noise-frac").disabled = !$("refiner").checked; });
// The API's own default: an adapter's subject or style is lost on the refiner, which never saw it.
$("lora").addEventListener("change", () => {
  $("refiner").checked = !document.querySelector("[name=lora]:checked");
  $("refiner").dispatchEvent(new Event("change"));
});
$("authorization").addEventListener("input", () => sessionStorage.setItem(API_KEY, $("authorization").value));
$("clear-history").addEventListener("click", () => {
  localStorage.removeItem(HISTORY_KEY);
  showHistory();
});
showHistory();
loadStatus();

// --- The Train panel (SDXL_TRAINING=1): photos -> a LoRA adapter trained on the cluster, then generate with it ---

const TRAINING_POLL_MS = 1000;
const TRAIN_FIELDS = ["name", "token", "class-word", "steps"]; // the API's names; the inputs are train-<name>
let training = null; // the status of the training this page follows

async function startTraining(event) {
  event.preventDefault();
  for (const place of $("train-panel").querySelectorAll(".error")) place.textContent = "";
  for (const input of $("train-panel").querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  const form = new FormData();
  for (const file of $("train-images").files) form.append("images", file, file.name);
  for (const name of TRAIN_FIELDS) {
    const value = $(`train-${name}`).value.trim();
    if (value) form.append(name, value);
  }
  $("train-start").disabled = true;
  $("train-use").hidden = true;
  $("train-status").textContent = "Sending the photos…";
  let reply;
  try {
    const response = await fetch(new URL("v1/trainings", API), { method: "POST", headers: keyHeaders(), body: form });
    reply = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
    if (!response.ok) {
      showTrainError(reply);
      $("train-status").textContent = "Not started: see the message above.";
      $("train-start").disabled = false;
      return;
    }
  } catch (error) {
    showTrainError({ error: error.message });
    $("train-start").disabled = false;
    return;
  }
  showTraining(reply);
  setTimeout(followTraining, TRAINING_POLL_MS);
}

// The API's message beside the field it names (the key's beside the key), else under the buttons.
function showTrainError({ field, error }) {
  if (field === "authorization") return showError(field, error);
  const own = $(`train-${field}-error`);
  const place = own ?? $("train-form-error");
  const message = own ? error.replace(`${field}: `, "") : error;
  place.textContent = `${message.charAt(0).toUpperCase()}${message.slice(1)}`;
  if (own) {
    $(`train-${field}`).setAttribute("aria-invalid", "true");
    $(`train-${field}`).focus();
  }
}

async function followTraining() {
  try {
    const response = await fetch(new URL(`v1/trainings/${training.id}`, API), { headers: keyHeaders() });
    if (response.ok) showTraining(await response.json());
  } catch {
    // the next poll tries again
  }
  if (["queued", "running"].includes(training.status)) setTimeout(followTraining, TRAINING_POLL_MS);
}

function showTraining(status) {
  training = status;
  const bar = $("train-progress");
  const active = ["queued", "running"].includes(status.status);
  $("train-start").disabled = active;
  $("train-cancel").disabled = !active;
  if (status.status === "queued") {
    bar.removeAttribute("value");
    $("train-status").textContent = `Queued: ${status.reason}.`;
  } else if (status.status === "running") {
    bar.max = status.total ?? 1;
    bar.value = status.step;
    const loss = status.loss == null ? "" : `, loss ${status.loss.toFixed(4)}`;
    $("train-status").textContent = status.total ? `Training: step ${status.step} of ${status.total}${loss}`
      : "Training: preparing the photos…";
  } else {
    bar.max = 1;
    bar.value = status.status === "succeeded" ? 1 : 0;
    $("train-status").textContent = {
      succeeded: `Trained ${status.adapter}: use it with the prompt “${status.use?.prompt}”.`,
      failed: `Failed: ${status.reason}`,
      cancelled: "Cancelled: no adapter was written.",
    }[status.status];
  }
  $("train-use").hidden = status.status !== "succeeded";
}

async function cancelTraining() {
  $("train-cancel").disabled = true;
  await fetch(new URL(`v1/trainings/${training.id}/cancel`, API), { method: "POST", headers: keyHeaders() });
}

// The new adapter checked in the form (the status lists it now), with a prompt that holds its trigger word.
async function generateWithTraining() {
  await loadStatus();
  for (const box of document.querySelectorAll("[name=lora]")) box.checked = box.value === training.adapter;
  $("lora").dispatchEvent(new Event("change"));
  $("prompt").value = training.use.prompt;
  $("prompt").focus();
}

$("train-form").addEventListener("submit", startTraining);
$("train-cancel").addEventListener("click", cancelTraining);
$("train-use").addEventListener("click", generateWithTraining);
