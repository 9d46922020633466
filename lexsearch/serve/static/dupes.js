// lexsearch serve: the near-duplicates page. Plain DOM, nothing loaded from elsewhere; it only shows.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function baseName(path) { return path.split(/[\\/]/).pop(); }

function bytes(n) {
  if (n === null || n === undefined) return "?";
  const units = ["B", "KB", "MB", "GB"];
  let k = 0;
  while (n >= 1000 && k < units.length - 1) { n /= 1000; k += 1; }
  return k === 0 ? `${n} B` : `${n.toFixed(1)} ${units[k]}`;
}

function card(file, group) {
  const li = el("li", "card dupe");
  const a = el("a");
  a.href = `/image/${file.id}`;
  a.target = "_blank";
  a.rel = "noopener";
  const img = el("img");
  img.src = `/thumb/${file.id}`;
  img.alt = baseName(file.path);
  img.loading = "lazy";
  a.append(img);
  li.append(a);
  const meta = el("div", "meta");
  const name = el("span", "name", baseName(file.path));
  name.title = file.path;
  meta.append(name);
  li.append(meta);
  const facts = el("dl", "facts");
  const pixels = file.width && file.height ? `${file.width} \u00d7 ${file.height}` : "?";
  const biggest = Math.max(...group.files.map((f) => (f.width || 0) * (f.height || 0)));
  for (const [term, value, best] of [
    ["pixels", pixels, (file.width || 0) * (file.height || 0) === biggest],
    ["file", bytes(file.size), false],
    ["taken", (file.taken || "?").replace("T", " "), false],
  ]) {
    facts.append(el("dt", "", term));
    const dd = el("dd", best ? "best" : "", value);
    if (best) dd.title = "the largest in its group";
    facts.append(dd);
  }
  li.append(facts);
  const path = el("p", "path faint", file.path);
  li.append(path);
  return li;
}

async function load() {
  const threshold = $("threshold").value;
  const url = threshold ? `/api/dupes?threshold=${encodeURIComponent(threshold)}` : "/api/dupes";
  $("status").textContent = "Looking for near-duplicates\u2026";
  $("status").className = "";
  $("groups").replaceChildren();
  let body = null;
  try {
    const resp = await fetch(url);
    body = await resp.json();
    if (!resp.ok) throw new Error((body && body.error) || `${resp.status} ${resp.statusText}`);
  } catch (err) {
    $("status").textContent = String(err.message || err);
    $("status").className = "error";
    return;
  }
  $("note").hidden = !body.note;
  $("note").textContent = body.note || "";
  const files = body.groups.reduce((n, g) => n + g.files.length, 0);
  $("status").textContent = body.groups.length
    ? `${body.groups.length} groups of near-duplicates (${files} files of ${body.images}), the largest first`
    : `No near-duplicates among ${body.images} images.`;
  $("status").className = body.groups.length ? "" : "empty";
  body.groups.forEach((group, k) => {
    const li = el("li", "group");
    li.append(el("h2", "", `Group ${k + 1} \u00b7 ${group.files.length} files`));
    const row = el("ol", "row");
    for (const file of group.files) row.append(card(file, group));
    li.append(row);
    $("groups").append(li);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const params = new URLSearchParams(location.search);
  if (params.get("threshold")) $("threshold").value = params.get("threshold");
  $("dupes-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    history.replaceState(null, "", `/dupes?threshold=${encodeURIComponent($("threshold").value)}`);
    load();
  });
  load();
});
