// Static checks: the manifest (MV3, minimal permissions, both browsers), every referenced
// file exists, every .js file parses (node --check), the pages have no inline script and a
// label for every control.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import { EXTENSION_DIR } from "./fake-dom.mjs";

const read = (name) => fs.readFileSync(path.join(EXTENSION_DIR, name), "utf8");
const manifest = JSON.parse(read("manifest.json"));
const exists = (name) => fs.existsSync(path.join(EXTENSION_DIR, name));

test("Manifest V3 for Chrome and Firefox", () => {
  assert.equal(manifest.manifest_version, 3);
  assert.equal(manifest.background.service_worker, "service-worker.js"); // Chrome
  assert.deepEqual(manifest.background.scripts, ["service-worker.js"]); // Firefox (event page)
  assert.equal(manifest.background.type, "module");
  assert.match(manifest.browser_specific_settings.gecko.id, /^[^@\s]+@[^@\s]+$/);
  // Firefox's store requires the data an extension transmits to be declared (since Nov 2025):
  // the images of the pages you visit go to the AltCap server you chose. Firefox 127 and
  // older reject the key, hence 128 as the minimum.
  assert.deepEqual(manifest.browser_specific_settings.gecko.data_collection_permissions, {
    required: ["websiteContent"],
  });
  assert.ok(Number.parseFloat(manifest.browser_specific_settings.gecko.strict_min_version) >= 128);
});

test("minimal permissions; no host access at install", () => {
  assert.deepEqual([...manifest.permissions].sort(), ["activeTab", "contextMenus", "scripting", "storage"]);
  assert.equal(manifest.host_permissions, undefined);
  assert.equal(manifest.content_scripts, undefined); // registered at run time, where allowed
  assert.deepEqual(manifest.optional_host_permissions, ["<all_urls>"]);
  assert.equal(manifest.externally_connectable, undefined); // web pages cannot message us
  assert.equal(manifest.web_accessible_resources, undefined); // nothing exposed to pages
  assert.notEqual(manifest.incognito, "split"); // Firefox does not support split
});

test("shortcut, popup and options", () => {
  assert.equal(manifest.commands["describe-page"].suggested_key.default, "Alt+Shift+D");
  assert.equal(manifest.action.default_popup, "popup.html");
  assert.equal(manifest.options_ui.page, "options.html");
});

test("every referenced file exists", () => {
  const files = [
    manifest.background.service_worker,
    ...manifest.background.scripts,
    manifest.action.default_popup,
    manifest.options_ui.page,
    "detection.js",
    "caption-text.js",
    "page-image.js",
    "content-script.js",
    "meaningless-alt.json",
  ];
  for (const html of ["popup.html", "options.html"]) {
    for (const [, ref] of read(html).matchAll(/(?:src|href)="([^":#]+)"/g)) files.push(ref);
  }
  for (const name of files) assert.ok(exists(name), name);
  // The files the service worker injects.
  const sw = read("service-worker.js");
  assert.match(sw, /SCRIPT_FILES = \["detection\.js", "caption-text\.js", "page-image\.js", "content-script\.js"\]/);
});

test("every .js file passes node --check", () => {
  const files = fs.readdirSync(EXTENSION_DIR).filter((f) => f.endsWith(".js"));
  assert.ok(files.length >= 7);
  for (const file of files) {
    const result = spawnSync(process.execPath, ["--check", path.join(EXTENSION_DIR, file)], { encoding: "utf8" });
    assert.equal(result.status, 0, `${file}: ${result.stderr}`);
  }
});

test("pages: no inline scripts (MV3 CSP), every control labelled", () => {
  for (const html of ["popup.html", "options.html"]) {
    const text = read(html);
    assert.match(text, /<html lang="en">/);
    for (const [tag] of text.matchAll(/<script\b[^>]*>/g)) assert.match(tag, /\bsrc="/, `${html}: inline script`);
    assert.doesNotMatch(text, /\son[a-z]+="/, `${html}: inline event handler`);
    const labels = new Set([...text.matchAll(/<label for="([^"]+)"/g)].map((m) => m[1]));
    for (const [, id] of text.matchAll(/<(?:input|textarea|select)\b[^>]*\bid="([^"]+)"/g)) {
      assert.ok(labels.has(id), `${html}: #${id} has no <label for>`);
    }
    for (const [, refs] of text.matchAll(/aria-describedby="([^"]+)"/g)) {
      for (const id of refs.split(/\s+/)) assert.match(text, new RegExp(`id="${id}"`), `${html}: #${id}`);
    }
    assert.match(text, /aria-live="polite"/, `${html}: status region`);
  }
});

test("the word list is the service's (captioner/data/meaningless-alt.json)", () => {
  const service = path.join(EXTENSION_DIR, "..", "captioner", "data", "meaningless-alt.json");
  if (!fs.existsSync(service)) return; // the extension folder alone
  assert.deepEqual(JSON.parse(fs.readFileSync(service, "utf8")).words, JSON.parse(read("meaningless-alt.json")).words);
});
