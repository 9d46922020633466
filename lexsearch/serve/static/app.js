// lexsearch serve: the page. Plain DOM, no framework, nothing loaded from elsewhere (works offline).
"use strict";

const PAGE = 24;
const $ = (id) => document.getElementById(id);
// gen: the search on screen; an answer to an older one (a search replaced while in flight) is dropped.
// maxTop: the most results one request may ask for (the server's limit, from /api/info).
const state = { mode: null, q: "", like: null, file: null, results: [], asked: 0, done: true,
                maxWeight: 1, current: -1, busy: false, gen: 0, maxTop: Infinity };

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Mark an image drawn at more than twice its own size, so CSS shows crisp pixels instead of a blur.
function crispWhenSmall(img) {
  img.addEventListener("load", () => {
    img.classList.toggle("upscaled", img.naturalWidth > 0 && img.naturalWidth * 2 <= img.clientWidth);
  });
}

function baseName(path) { return path.split(/[\\/]/).pop(); }

async function getJSON(url, options, headers) {
  const resp = await fetch(url, options);
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) throw new Error((body && body.error) || `${resp.status} ${resp.statusText}`);
  if (headers) resp.headers.forEach((value, name) => { headers[name] = value; });
  return body;
}

// The search's notes (lines about the query as a whole), as `lexsearch query` prints them on stderr.
function showNotes(headers) {
  let notes = [];
  try { notes = JSON.parse(headers["lexsearch-notes"] || "[]"); } catch (e) { notes = []; }
  const box = $("notes");
  box.replaceChildren(...notes.filter((n) => typeof n === "string").map((n) => el("li", null, n)));
  box.hidden = !box.children.length;
}

// A chip's size says how much its word adds to the score: relative to the strongest word on the page.
function chip(word, weight, maxWeight, clickable) {
  const node = el(clickable ? "button" : "span", "chip");
  if (clickable) { node.type = "button"; node.setAttribute("aria-pressed", "false"); }
  const share = maxWeight > 0 ? Math.min(1, weight / maxWeight) : 0;
  node.style.setProperty("--share", Math.sqrt(share).toFixed(3)); // style.css turns it into a size
  if (share >= 0.5) node.classList.add("strong");
  node.append(document.createTextNode(word));
  node.append(el("span", "w", weight.toFixed(3)));
  node.title = `${word}: adds ${weight.toFixed(3)} to the score`;
  node.dataset.word = word;
  return node;
}

// "Your query means": the words the query's own vector lights up (GET /api/explain?text=, the JSON of
// `lexsearch explain --text`), the strongest MEANS_SHOWN at once and every one on demand.
const MEANS_SHOWN = 8;

async function showMeaning(gen) {
  const row = $("means");
  row.replaceChildren();
  row.hidden = true;
  if (state.mode !== "text") return;
  let info;
  try {
    info = await getJSON(`/api/explain?text=${encodeURIComponent(state.q)}`);
  } catch (err) {
    return; // the search itself says what is wrong with the query
  }
  if (gen !== state.gen || !info.words.length) return;
  const max = Math.max(1e-9, info.words[0].weight);
  const chips = info.words.map((w) => {
    const c = chip(w.word, w.weight, max, false);
    c.style.fontSize = "";
    c.title = `${w.word}: weight ${w.weight.toFixed(4)} in the query's vector`;
    return c;
  });
  row.append(el("span", "label", "Your query means:"), ...chips.slice(0, MEANS_SHOWN));
  const rest = chips.length - MEANS_SHOWN;
  if (rest > 0) {
    const all = el("button", "all", `+${rest} more`);
    all.type = "button";
    all.title = "Show every word of the query's vector";
    all.addEventListener("click", () => { all.replaceWith(...chips.slice(MEANS_SHOWN)); });
    row.append(all);
  }
  row.hidden = false;
}

function setStatus(text, kind) {
  const s = $("status");
  s.textContent = text;
  s.className = kind || "";
}

// The order and the photo filters are words of the query (sort:date after:2023 camera:"pixel 7"), so a
// bookmarked page keeps them: the sort toggle and the filter controls rewrite their own word. The grammar is
// lexsearch/search/meta.py's: key:value or key:"quoted value", standing alone, any case.
const FILTER_KEYS = ["after", "before", "camera", "in", "orientation"];
const wordsFor = (keys) => new RegExp(`(?<!\\S)(?:${keys}):(?:"([^"]*)"?|(\\S*))`, "gi");
const META_WORD = wordsFor([...FILTER_KEYS, "sort"].join("|"));

// The value of the last `key:` word in the text ("" when there is none).
function wordOf(text, key) {
  const m = [...text.matchAll(wordsFor(key))].pop();
  return m ? (m[1] !== undefined ? m[1] : m[2]).trim() : "";
}

// The text with every `key:` word replaced by one `key:value` at the end (none when the value is empty).
function withWord(text, key, value) {
  const rest = text.replace(wordsFor(key), " ").replace(/\s+/g, " ").trim();
  const v = value.replace(/"/g, "").trim(); // the grammar has no escaped quote
  if (!v) return rest;
  const word = /\s/.test(v) ? `${key}:"${v}"` : `${key}:${v}`;
  return rest ? `${rest} ${word}` : word;
}

function sortOf(text) {
  const value = wordOf(text, "sort").toLowerCase();
  return ["score", "date", "date-asc"].includes(value) ? value : "score";
}

function withSort(text, sort) { return withWord(text, "sort", sort === "score" ? "" : sort); }

const filterControl = (key) => document.querySelector(`#filters [data-key="${key}"]`);

// The controls show the filters of the query on screen; the summary counts them.
function fillFilters(text, open) {
  let active = 0;
  for (const key of FILTER_KEYS) {
    const control = filterControl(key);
    const value = wordOf(text, key);
    control.value = key === "orientation" ? value.toLowerCase() : value;
    if (control.selectedIndex === -1) control.value = ""; // orientation:sideways: the search says why not
    if (value) active += 1;
  }
  $("f-count").textContent = active ? ` (${active})` : "";
  if (open && active) $("filters-box").open = true;
}

// The controls' values (of `keys`) written into the query, which then runs, as the sort toggle does.
function applyFilters(keys) {
  const q = $("q");
  let text = (state.mode === "text" ? state.q : q.value).trim();
  for (const key of keys) text = withWord(text, key, filterControl(key).value);
  if (state.mode === "text" && text === state.q) return; // nothing changed (Enter after a change)
  q.value = text;
  if (!text.replace(META_WORD, " ").trim()) {
    fillFilters(text, false);
    setStatus("Type some words to search for: the filters narrow their matches.", "empty");
    return;
  }
  state.q = text;
  state.like = null;
  run("text");
}

function urlFor(mode, extra) {
  if (mode === "text") return `/api/search?q=${encodeURIComponent(state.q)}&top=${extra}`;
  if (mode === "like") return `/api/similar/${state.like}?top=${extra}`;
  return `/api/search/image?top=${extra}`;
}

async function run(mode, { push = true } = {}) {
  state.gen += 1;
  state.mode = mode;
  state.results = [];
  state.asked = 0;
  state.done = false;
  state.busy = false; // a search still in flight is for the old query: its answer is dropped
  $("more").hidden = true;
  $("grid").replaceChildren();
  showNotes({});
  if (push) {
    const params = new URLSearchParams();
    if (mode === "text") params.set("q", state.q);
    if (mode === "like") params.set("like", state.like);
    const url = mode === "image" ? "/" : "/?" + params.toString();
    history.pushState({ q: state.q, like: state.like }, "", url);
  }
  if (mode === "text") {
    $("sort").value = sortOf(state.q);
    fillFilters(state.q, !push); // a bookmark with filters opens the filter bar
  }
  document.title = mode === "text" ? `${state.q} - lexsearch` : "lexsearch";
  showMeaning(state.gen);
  await more();
}

// "Show more" is offered only when the server said there is more: each request asks for one result beyond
// the page (never past the server's limit), and the button stays hidden while a request is in flight.
async function more() {
  if (state.busy || state.done) return;
  const gen = state.gen;
  state.busy = true;
  $("more").hidden = true;
  const want = Math.min(state.asked + PAGE, state.maxTop);
  setStatus(state.asked ? "Loading more\u2026" : "Searching\u2026");
  try {
    const options = state.mode === "image"
      ? { method: "POST", body: state.file, headers: { "Content-Type": state.file.type || "application/octet-stream" } }
      : undefined;
    const headers = {};
    const answer = await getJSON(urlFor(state.mode, Math.min(want + 1, state.maxTop)), options, headers);
    if (gen !== state.gen) return;
    const results = answer.slice(0, want);
    const fresh = results.slice(state.results.length);
    state.asked = want;
    state.done = answer.length <= want;
    if (!state.results.length) {
      state.maxWeight = Math.max(1e-9, ...results.flatMap((r) => r.words.map((w) => w.weight)));
      showNotes(headers);
    }
    state.results = results;
    fresh.forEach((r, k) => $("grid").append(card(r, state.results.length - fresh.length + k)));
    describe();
  } catch (err) {
    if (gen !== state.gen) return;
    setStatus(`Search failed: ${err.message}`, "error");
    state.done = true;
  } finally {
    if (gen === state.gen) {
      state.busy = false;
      $("more").hidden = state.done;
    }
  }
}

function describe() {
  const n = state.results.length;
  const what = state.mode === "text" ? `\u201c${state.q}\u201d`
    : state.mode === "like" ? "this image" : `your image ${state.file ? state.file.name : ""}`;
  if (!n) {
    setStatus(state.mode === "text"
      ? `No image matches ${what}. A result must show at least one word of the query; try other words.`
      : `No image is like ${what}.`, "empty");
    return;
  }
  const prefix = state.mode === "text" ? `Images matching ${what}` : `Images like ${what}`;
  setStatus(`${prefix}: ${n}${state.done ? "" : "+"} shown. The words under each say why it matched.`);
}

function card(r, index) {
  const li = el("li");
  const btn = el("button", "card");
  btn.type = "button";
  btn.dataset.index = index;
  const img = el("img");
  img.src = `/thumb/${r.id}`;
  img.alt = baseName(r.path);
  img.loading = "lazy";
  crispWhenSmall(img);
  const meta = el("span", "meta");
  meta.append(el("span", "rank", `#${r.rank}`), el("span", "name", baseName(r.path)),
              el("span", "score", r.score.toFixed(3)));
  if (r.taken) meta.append(el("span", "taken", r.taken.slice(0, 10))); // sorted by date: the date it sorts by
  const chips = el("span", "chips");
  r.words.forEach((w) => chips.append(chip(w.word, w.weight, state.maxWeight, false)));
  if (!r.words.length) chips.append(el("span", "faint", "similar overall, no shared word"));
  btn.append(img, meta, chips);
  btn.addEventListener("click", () => openDetail(index));
  li.append(btn);
  return li;
}

// ------------------------------------------------------------------------------------- the detail view
function showWord(r, word) {
  document.querySelectorAll("#detail button.chip").forEach((c) => c.setAttribute("aria-pressed", String(c.dataset.word === word)));
  const img = $("d-img");
  if (word === null) {
    img.src = `/image/${r.id}`;
    img.alt = baseName(r.path);
    $("d-caption").textContent = "The photo. Choose a word to see where it is.";
    return;
  }
  img.src = `/api/heatmap/${r.id}?word=${encodeURIComponent(word)}`;
  img.alt = `Heat map of ${word} over ${baseName(r.path)}`;
  $("d-caption").textContent = `Where the image shows \u201c${word}\u201d: its own colours where the word is strong, hatched grey where it is absent.`;
}

async function openDetail(index) {
  const r = state.results[index];
  if (!r) return;
  state.current = index;
  const dialog = $("detail");
  $("d-title").textContent = baseName(r.path);
  $("d-path").textContent = r.path;
  $("d-open").href = `/image/${r.id}`;
  $("d-score").textContent = r.words.length ? `score ${r.score.toFixed(3)}` : "";
  const match = $("d-match");
  match.replaceChildren();
  const top = Math.max(1e-9, ...r.words.map((w) => w.weight));
  r.words.forEach((w) => match.append(chip(w.word, w.weight, top, true)));
  $("d-match-section").hidden = !r.words.length;
  $("d-words").replaceChildren(el("span", "faint", "\u2026"));
  if (!dialog.open) dialog.showModal();
  showWord(r, r.words.length ? r.words[0].word : null);
  (match.querySelector("button") || $("d-photo")).focus();
  try {
    const info = await getJSON(`/api/explain/${r.id}`);
    if (state.current !== index) return;
    const own = $("d-words");
    own.replaceChildren();
    const max = Math.max(1e-9, ...info.words.map((w) => w.weight));
    info.words.forEach((w) => own.append(chip(w.word, w.weight, max, true)));
  } catch (err) {
    $("d-words").replaceChildren(el("span", "faint", `could not load: ${err.message}`));
  }
}

function step(delta) {
  const next = state.current + delta;
  if (next < 0 || next >= state.results.length) return;
  openDetail(next);
}

document.addEventListener("DOMContentLoaded", () => {
  crispWhenSmall($("d-img"));
  const q = $("q");
  $("search").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = q.value.trim();
    if (!text) { setStatus("Type some words to search for.", "empty"); return; }
    state.q = text;
    state.like = null;
    run("text");
  });
  $("sort").addEventListener("change", (ev) => {
    const text = (state.mode === "text" ? state.q : q.value).trim();
    if (!text) return;
    state.q = withSort(text, ev.target.value);
    q.value = state.q;
    state.like = null;
    run("text");
  });
  for (const key of FILTER_KEYS) {
    const control = filterControl(key);
    control.addEventListener("change", () => { if (control.reportValidity()) applyFilters([key]); });
  }
  $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); applyFilters(FILTER_KEYS); });
  $("f-clear").addEventListener("click", () => {
    for (const key of FILTER_KEYS) filterControl(key).value = "";
    applyFilters(FILTER_KEYS);
  });
  $("upload").addEventListener("change", (ev) => {
    const file = ev.target.files[0];
    if (!file) return;
    state.file = file;
    state.like = null;
    run("image");
    ev.target.value = "";
  });
  $("more").addEventListener("click", more);
  // Infinite scroll: the "Show more" button loads the next page when it scrolls into view.
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) more();
  }, { rootMargin: "300px" }).observe($("more"));

  const dialog = $("detail");
  dialog.addEventListener("click", (ev) => {
    if (ev.target === dialog) dialog.close(); // a click on the backdrop
    const c = ev.target.closest("button.chip");
    if (c) showWord(state.results[state.current], c.dataset.word);
  });
  dialog.addEventListener("close", () => {
    const cardBtn = document.querySelector(`.card[data-index="${state.current}"]`);
    if (cardBtn) cardBtn.focus();
  });
  $("d-close").addEventListener("click", () => dialog.close());
  $("d-photo").addEventListener("click", () => showWord(state.results[state.current], null));
  $("d-similar").addEventListener("click", () => {
    state.like = state.results[state.current].id;
    dialog.close();
    run("like");
  });

  document.addEventListener("keydown", (ev) => {
    if (dialog.open) {
      if (ev.key === "ArrowRight") { ev.preventDefault(); step(1); }
      if (ev.key === "ArrowLeft") { ev.preventDefault(); step(-1); }
      return;
    }
    if (ev.key === "/" && document.activeElement !== q) { ev.preventDefault(); q.focus(); q.select(); }
  });

  window.addEventListener("popstate", () => fromLocation(false));
  fromLocation(false);
  getJSON("/api/info").then((info) => {
    if (info.max_top > 0) state.maxTop = info.max_top;
    q.title = `Search ${info.images} images in ${info.name}`;
    if (!state.mode) setStatus(`${info.images} images in the collection \u201c${info.name}\u201d. Type words to search them.`);
  }).catch(() => {});
});

// Searches are bookmarkable: /?q=... runs that search on load, /?like=ID the images like image ID.
function fromLocation(push) {
  const params = new URLSearchParams(location.search);
  const q = params.get("q");
  const like = params.get("like");
  if (q) {
    $("q").value = q;
    state.q = q;
    run("text", { push });
  } else if (like && /^[1-9][0-9]*$/.test(like)) {
    state.like = Number(like);
    run("like", { push });
  } else {
    $("q").focus();
  }
}
