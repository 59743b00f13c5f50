// service-worker.js wired to a fake `chrome` and a fake fetch: the consent gate (nothing
// reaches the server before consent), message validation, captions, badge, registration
// of the content script, the shortcut and the context menu, and a tab's frames added up
// (badge, popup status, toggle).

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { EXTENSION_DIR, loadDetection } from "./fake-dom.mjs";

const ID = "altcapfakeid";
const ORIGIN = `chrome-extension://${ID}/`;

function event() {
  const listeners = [];
  return { listeners, addListener: (fn) => listeners.push(fn), fire: (...args) => listeners.map((fn) => fn(...args)) };
}

function area() {
  const data = {};
  return {
    data,
    async get(keys) {
      return Object.fromEntries(keys.filter((k) => k in data).map((k) => [k, data[k]]));
    },
    async set(values) {
      Object.assign(data, values);
    },
    async remove(keys) {
      for (const k of [keys].flat()) delete data[k];
    },
    async setAccessLevel() {},
  };
}

const log = { server: [], badge: [], registered: [], updated: [], unregistered: 0, executed: [], tabMessages: [], optionsOpened: 0, menus: [] };
let granted = [];
let contentScriptPresent = false;
// Frames of tab 7 that run the content script: frameId -> {showing, found, described, failed}.
const tab7 = new Map();
let injectableFrames = [0]; // what executeScript({allFrames}) reaches
let redirecting = false; // the server's /readyz answers 307 to another origin

const chrome = {
  runtime: {
    id: ID,
    getURL: (p = "") => ORIGIN + p,
    getManifest: () => JSON.parse(fs.readFileSync(path.join(EXTENSION_DIR, "manifest.json"), "utf8")),
    onMessage: event(),
    onInstalled: event(),
    onStartup: event(),
    openOptionsPage: async () => {
      log.optionsOpened++;
    },
  },
  storage: { sync: area(), local: area(), session: area(), onChanged: event() },
  permissions: { getAll: async () => ({ origins: granted, permissions: [] }), onAdded: event(), onRemoved: event() },
  scripting: {
    scripts: [],
    async getRegisteredContentScripts() {
      return chrome.scripting.scripts;
    },
    async unregisterContentScripts() {
      chrome.scripting.scripts = [];
      log.unregistered++;
    },
    async registerContentScripts(scripts) {
      if (chrome.scripting.scripts.length) throw new Error("Duplicate script ID 'altcap'");
      chrome.scripting.scripts = scripts;
      log.registered.push(scripts);
    },
    async updateContentScripts(scripts) {
      if (!chrome.scripting.scripts.length) throw new Error("Nonexistent script ID 'altcap'");
      chrome.scripting.scripts = scripts.map((s) => ({ ...chrome.scripting.scripts[0], ...s }));
      log.updated.push(scripts);
    },
    async executeScript(details) {
      log.executed.push(details);
      contentScriptPresent = true;
      if (details.target.allFrames) return injectableFrames.map((frameId) => ({ frameId, result: null }));
      return details.target.frameIds.map((frameId) => ({ frameId, result: null }));
    },
  },
  contextMenus: {
    onClicked: event(),
    removeAll: async () => {},
    create: (menu) => log.menus.push(menu),
  },
  action: {
    setBadgeText: async (details) => log.badge.push(details),
    setBadgeBackgroundColor: async () => {},
  },
  commands: { onCommand: event() },
  tabs: {
    onUpdated: event(),
    query: async () => [{ id: 5 }],
    onRemoved: event(),
    async sendMessage(tabId, message, options) {
      log.tabMessages.push({ tabId, message, options });
      if (tabId === 7) return frameAnswer(options.frameId, message);
      if (!contentScriptPresent) throw new Error("Could not establish connection. Receiving end does not exist.");
      if (message.type === "ping") return { pong: true };
      return { ok: true, found: 1, described: 0, failed: 0 };
    },
  },
};

/** A content script in frame `frameId` of tab 7, as far as the service worker can tell. */
function frameAnswer(frameId, message) {
  const frame = tab7.get(frameId);
  if (!frame) throw new Error("Could not establish connection. Receiving end does not exist.");
  if (message.type === "toggle") frame.showing = message.showing;
  if (message.type === "restore") Object.assign(frame, { showing: true, found: 0, described: 0, failed: 0 });
  const { showing, found, described, failed, unsure = 0, suspect = 0 } = frame;
  return { running: true, showing, consented: true, found, described, failed, unsure, suspect };
}

globalThis.chrome = chrome;
globalThis.fetch = async (url, init = {}) => {
  if (url.startsWith(ORIGIN)) {
    return new Response(fs.readFileSync(path.join(EXTENSION_DIR, url.slice(ORIGIN.length))));
  }
  log.server.push({ url, init });
  if (url.endsWith("/readyz") && redirecting) {
    // What a browser does with a 307 to another origin, by the request's redirect mode.
    if (init.redirect === "error") throw new TypeError("Failed to fetch");
    if (init.redirect === "manual") return { type: "opaqueredirect", status: 0, ok: false, json: async () => null };
  }
  if (url.endsWith("/readyz")) {
    return new Response(JSON.stringify({ status: "ready", model: "photos/final@1a2b3c4d", language: "de" }));
  }
  const body = JSON.parse(init.body);
  return new Response(
    JSON.stringify({ results: body.images.map(() => ({ caption: "A cat on a sofa.", tokens: 5, cached: false, source: {} })) }),
    { headers: { "Content-Type": "application/json" } },
  );
};

await import("../service-worker.js");

const CONTENT = { id: ID, tab: { id: 5, incognito: false }, frameId: 0, url: "https://example.com/page" };
const POPUP = { id: ID, url: ORIGIN + "popup.html" };

function send(message, sender = CONTENT) {
  return new Promise((resolve) => {
    for (const fn of chrome.runtime.onMessage.listeners) fn(message, sender, resolve);
  });
}

/** What the options page's "I agree" stores: the consent in storage.local, for the server. */
async function consent(extra = {}) {
  Object.assign(chrome.storage.sync.data, extra);
  const consentedServer = chrome.storage.sync.data.serverUrl || "http://127.0.0.1:8000";
  Object.assign(chrome.storage.local.data, { consented: true, consentedServer });
}

function withdraw() {
  chrome.storage.local.data.consented = false;
}

test("install: menu created, options opened for the consent, nothing registered yet", async () => {
  chrome.runtime.onInstalled.fire({ reason: "install" });
  await sleep(20);
  assert.deepEqual(log.menus.map((m) => [m.id, m.title, m.contexts[0]]), [["altcap-describe-image", "Describe this image", "image"]]);
  assert.equal(log.optionsOpened, 1);
  assert.equal(chrome.scripting.scripts.length, 0); // no consent, no content script
});

test("before consent nothing reaches the server", async () => {
  const hello = await send({ type: "hello" });
  assert.equal(hello.consented, false);
  assert.equal(hello.auto, false);
  assert.ok(hello.words.includes("image"));
  const answer = await send({ type: "describe", images: [{ id: "i1", url: "https://example.com/cat.jpg" }] });
  assert.equal(answer.results[0].error.code, "no_consent");
  const check = await send({ type: "check-server" }, POPUP);
  assert.equal(check.ok, false);
  assert.equal(log.server.length, 0);
});

test("hello hands the content script the stopwords too, so it judges alts as the service does", async () => {
  const shipped = JSON.parse(fs.readFileSync(path.join(EXTENSION_DIR, "meaningless-alt.json"), "utf8"));
  const hello = await send({ type: "hello" });
  assert.deepEqual(hello.words, shipped.words);
  assert.deepEqual(hello.stopwords, shipped.stopwords);
  // What the content script does with the answer (content-script.js, "hello").
  const detection = loadDetection();
  detection.setMeaninglessWords(hello.words, hello.stopwords);
  assert.equal(detection.classifyAlt("the picture"), "meaningless"); // alttext.py's verdict
  assert.equal(detection.classifyAlt("l'image", null, "fr"), "meaningless");
});

test("invalid messages are refused with an error", async () => {
  const answers = await Promise.all([
    send({ type: "describe", images: [{ id: "i1", url: "javascript:alert(1)" }] }),
    send({ type: "hello" }, { ...CONTENT, id: "other-extension" }),
    send({ type: "describe-tab", tabId: 5 }), // a page cannot drive tabs
    send({ type: "evil" }),
  ]);
  for (const answer of answers) assert.equal(answer.error.code, "invalid_message");
  assert.equal(log.server.length, 0);
});

test("after consent: captions, API key sent to the server only, badge", async () => {
  await consent();
  chrome.storage.local.data.apiKey = "k-123";
  const hello = await send({ type: "hello" });
  assert.equal(hello.auto, true);
  assert.equal(hello.prefix, "Appears to be: ");
  assert.equal(hello.textPrefix, "Appears to say: ");
  assert.equal(JSON.stringify(hello).includes("k-123"), false); // the key never reaches a page
  assert.equal("apiKey" in chrome.storage.local.data, false); // moved where no content script reads
  const answer = await send({ type: "describe", images: [{ id: "i1", url: "https://example.com/cat.jpg" }] });
  const cat = "A cat on a sofa.";
  assert.deepEqual(answer.results, [{ id: "i1", caption: cat, alt: cat, alt_from: "caption", cached: false }]);
  assert.equal(log.server.length, 1);
  assert.equal(log.server[0].url, "http://127.0.0.1:8000/v1/captions");
  assert.equal(log.server[0].init.headers.Authorization, "Bearer k-123");
  await send({ type: "counts", found: 3, described: 2, failed: 1 });
  assert.deepEqual(log.badge.at(-1), { tabId: 5, text: "2" });

  // "Check the server" says which model answers, and in what language it describes.
  const check = await send({ type: "check-server" }, POPUP);
  assert.equal(check.ok, true);
  assert.equal(
    check.message,
    "The AltCap server at http://127.0.0.1:8000 is ready: model photos/final@1a2b3c4d, descriptions in German (de).",
  );
  assert.equal(log.server.at(-1).url, "http://127.0.0.1:8000/readyz");
});

test("never sites and private windows", async () => {
  await consent({ sitesNever: ["example.com"] });
  assert.equal((await send({ type: "hello" })).auto, false);
  chrome.storage.sync.data.sitesNever = [];
  const privateTab = { ...CONTENT, tab: { id: 6, incognito: true } };
  assert.equal((await send({ type: "hello" }, privateTab)).enabled, false);
  const answer = await send({ type: "describe", images: [{ id: "a", url: "https://example.com/x.jpg" }] }, privateTab);
  assert.equal(answer.results[0].error.code, "incognito_off");
});

test("registration follows consent, mode, lists and granted sites", async () => {
  await consent({ mode: "auto", sitesAlways: ["news.example"], sitesNever: ["ads.example"] });
  granted = ["http://127.0.0.1/*"];
  const registration = await send({ type: "sync" }, POPUP);
  assert.deepEqual(registration.matches, ["*://*.news.example/*", "http://127.0.0.1/*"]);
  const [script] = chrome.scripting.scripts;
  assert.deepEqual(script.js, ["detection.js", "caption-text.js", "page-image.js", "content-script.js"]);
  assert.equal(script.allFrames, true); // iframes, each matched by its own URL
  assert.equal(script.matchOriginAsFallback, true); // about:blank / srcdoc by their origin
  assert.deepEqual(script.excludeMatches, ["*://*.ads.example/*"]);

  // A change while registered updates the script in place: no moment without it, in which
  // a frame that loads would be missed. An emptied list is cleared, not left behind.
  const before = { registered: log.registered.length, unregistered: log.unregistered };
  chrome.storage.sync.data.sitesNever = [];
  chrome.storage.sync.data.sitesAlways = ["blog.example"];
  assert.deepEqual((await send({ type: "sync" }, POPUP)).matches, ["*://*.blog.example/*", "http://127.0.0.1/*"]);
  assert.deepEqual(chrome.scripting.scripts[0].matches, ["*://*.blog.example/*", "http://127.0.0.1/*"]);
  assert.deepEqual(chrome.scripting.scripts[0].excludeMatches, []);
  assert.deepEqual({ registered: log.registered.length, unregistered: log.unregistered }, before);
  assert.equal(log.updated.length > 0, true);

  withdraw();
  assert.deepEqual((await send({ type: "sync" }, POPUP)).matches, []);
  assert.equal(chrome.scripting.scripts.length, 0);
  assert.equal(log.unregistered, before.unregistered + 1);
  granted = [];
});

test("describe-tab injects through activeTab, then asks the page", async () => {
  await consent();
  contentScriptPresent = false;
  log.tabMessages.length = 0;
  const answer = await send({ type: "describe-tab", tabId: 5 }, POPUP);
  assert.equal(answer.ok, true);
  const files = ["detection.js", "caption-text.js", "page-image.js", "content-script.js"];
  assert.deepEqual(log.executed.at(-2), { target: { tabId: 5, frameIds: [0] }, files });
  assert.deepEqual(log.executed.at(-1), { target: { tabId: 5, allFrames: true }, files }); // iframes
  assert.deepEqual(log.tabMessages.map((m) => m.message.type), ["ping", "describe-now"]);
});

test("the shortcut describes the active tab; without consent it opens the options", async () => {
  await consent();
  log.tabMessages.length = 0;
  await Promise.all(chrome.commands.onCommand.fire("describe-page", { id: 9 }));
  assert.deepEqual(log.tabMessages.at(-1), { tabId: 9, message: { type: "describe-now" }, options: { frameId: 0 } });

  withdraw();
  const opened = log.optionsOpened;
  await Promise.all(chrome.commands.onCommand.fire("describe-page", { id: 9 }));
  assert.equal(log.optionsOpened, opened + 1);
});

test("the context menu describes the clicked image in its frame", async () => {
  await consent();
  log.tabMessages.length = 0;
  await Promise.all(
    chrome.contextMenus.onClicked.fire({ menuItemId: "altcap-describe-image", srcUrl: "https://example.com/a.png", frameId: 0 }, { id: 5 }),
  );
  assert.deepEqual(log.tabMessages.at(-1).message, { type: "describe-target", srcUrl: "https://example.com/a.png" });
});

test("a new page in the tab clears its badge", () => {
  chrome.tabs.onUpdated.fire(5, { status: "loading", url: "https://example.com/next" });
  assert.deepEqual(log.badge.at(-1), { tabId: 5, text: "" });
});

// --- a tab's frames ----------------------------------------------------------------------

const frame = (frameId, url = "https://example.com/page") => ({ id: ID, tab: { id: 7, incognito: false }, frameId, url });
/** A fresh tab 7: no frames in the fake page, none remembered by the worker. */
async function resetTab7() {
  tab7.clear();
  await Promise.all(chrome.tabs.onRemoved.fire(7));
}
const badgeOf = (tabId) => log.badge.filter((b) => b.tabId === tabId).at(-1).text;

test("the badge adds up the frames of a tab; a frame that loads again counts from zero", async () => {
  await consent();
  await resetTab7();
  await send({ type: "hello" }, frame(0));
  await send({ type: "hello" }, frame(3, "https://widgets.example/embed"));
  await send({ type: "counts", found: 2, described: 2, failed: 0 }, frame(0));
  await send({ type: "counts", found: 4, described: 2, failed: 1, unsure: 1 }, frame(3));
  assert.equal(badgeOf(7), "4"); // described only: an image with no confident description has none
  await send({ type: "counts", found: 2, described: 1, failed: 0 }, frame(0)); // replaces, not adds
  assert.equal(badgeOf(7), "3");
  await send({ type: "hello" }, frame(3)); // the iframe navigated
  assert.equal(badgeOf(7), "1");
  // Saved for a worker that is stopped and started again.
  const saved = chrome.storage.session.data.tabFrames;
  assert.deepEqual(saved[7].frames[0], { found: 2, described: 1, failed: 0, unsure: 0, suspect: 0 });
  chrome.tabs.onRemoved.fire(7);
  await sleep(10);
  assert.equal(chrome.storage.session.data.tabFrames[7], undefined);
});

test("popup status sums every frame; frames that stopped answering are dropped", async () => {
  await consent();
  await resetTab7();
  tab7.set(0, { showing: true, found: 2, described: 2, failed: 0 });
  tab7.set(4, { showing: true, found: 4, described: 1, failed: 2, unsure: 1, suspect: 2 });
  for (const frameId of [0, 4, 9]) await send({ type: "hello" }, frame(frameId));
  const status = await send({ type: "tab-status", tabId: 7 }, POPUP);
  assert.deepEqual(
    { ...status },
    { ok: true, running: true, showing: true, consented: true, frames: 2, found: 6, described: 3, failed: 2, unsure: 1, suspect: 2 },
  );
  log.tabMessages.length = 0;
  await send({ type: "tab-status", tabId: 7 }, POPUP);
  assert.deepEqual(log.tabMessages.map((m) => m.options.frameId), [0, 4]); // frame 9 is gone

  tab7.clear();
  assert.equal((await send({ type: "tab-status", tabId: 7 }, POPUP)).error.code, "no_content_script");
});

test("the toggle switches every frame the same way, and a frame loaded later follows", async () => {
  await consent();
  await resetTab7();
  tab7.set(0, { showing: true, found: 1, described: 1, failed: 0 });
  tab7.set(2, { showing: true, found: 1, described: 1, failed: 0 });
  for (const frameId of [0, 2]) await send({ type: "hello" }, frame(frameId));

  log.tabMessages.length = 0;
  const hidden = await send({ type: "tab-toggle", tabId: 7 }, POPUP);
  assert.equal(hidden.showing, false);
  const toggles = log.tabMessages.filter((m) => m.message.type === "toggle");
  assert.deepEqual(toggles.map((m) => [m.options.frameId, m.message.showing]), [[0, false], [2, false]]);
  assert.equal((await send({ type: "hello" }, frame(5))).showing, false); // a new iframe starts hidden
  tab7.set(5, { showing: false, found: 0, described: 0, failed: 0 });

  const shown = await send({ type: "tab-toggle", tabId: 7 }, POPUP);
  assert.equal(shown.showing, true);
  assert.deepEqual([...tab7.values()].map((f) => f.showing), [true, true, true]);
  assert.equal((await send({ type: "hello" }, frame(6))).showing, true);

  // Switching the site off puts every frame back.
  await send({ type: "tab-restore", tabId: 7 }, POPUP);
  assert.deepEqual([...tab7.values()].map((f) => f.described), [0, 0, 0]);
  // A new page in the tab: descriptions show again, counts start from zero.
  await send({ type: "tab-toggle", tabId: 7 }, POPUP);
  chrome.tabs.onUpdated.fire(7, { status: "loading" });
  assert.equal((await send({ type: "hello" }, frame(8))).showing, true);
});

test("describe-tab reaches the iframes too, quietly", async () => {
  await consent();
  await resetTab7();
  tab7.set(0, { showing: true, found: 0, described: 0, failed: 0 });
  tab7.set(11, { showing: true, found: 0, described: 0, failed: 0 });
  injectableFrames = [0, 11];
  log.tabMessages.length = 0;
  await send({ type: "describe-tab", tabId: 7 }, POPUP);
  const asked = log.tabMessages.filter((m) => m.message.type === "describe-now");
  assert.deepEqual(asked.map((m) => [m.options.frameId, m.message.quiet === true]), [[0, false], [11, true]]);
  injectableFrames = [0];
});

test("each frame's own site decides: never sites, and about:blank frames by their origin", async () => {
  await consent({ sitesNever: ["ads.example"] });
  assert.equal((await send({ type: "hello" }, frame(3, "https://ads.example/slot"))).enabled, false);
  const blank = { ...frame(4, "about:blank"), origin: "https://ads.example" };
  assert.equal((await send({ type: "hello" }, blank)).enabled, false);
  assert.equal((await send({ type: "hello" }, frame(5, "https://news.example/"))).enabled, true);
  chrome.storage.sync.data.sitesNever = [];
});

// --- what a hostile page must not get (issue 20) -------------------------------------------

const onSite = (site, tabId = 5) => ({ id: ID, tab: { id: tabId, incognito: false, url: `${site}/` }, frameId: 0, url: `${site}/`, origin: site });

test("captions are kept per page: another site asking for the same image is not answered from the cache", async () => {
  await consent();
  const images = [{ id: "i1", url: "https://cdn.example/kept-per-site.jpg" }];
  const before = log.server.length;
  assert.equal((await send({ type: "describe", images }, onSite("https://victim.example"))).results[0].cached, false);
  assert.equal((await send({ type: "describe", images }, onSite("https://victim.example"))).results[0].cached, true);
  assert.equal((await send({ type: "describe", images }, onSite("https://hostile.example", 6))).results[0].cached, false);
  // an iframe of the hostile site inside the victim's page: another partition again
  const framed = { ...onSite("https://victim.example"), frameId: 3, url: "https://hostile.example/ad", origin: "https://hostile.example" };
  assert.equal((await send({ type: "describe", images }, framed)).results[0].cached, false);
  assert.equal(log.server.length, before + 3);
});

test("the worker downloads no image, even with image bytes allowed: it asks the content script", async () => {
  await consent({ allowBytes: true });
  const before = log.server.length;
  const answer = await send({ type: "describe", images: [{ id: "i1", url: "http://wiki.corp/private.png" }] });
  assert.equal(answer.results[0].error.code, "needs_bytes");
  assert.equal(log.server.length, before); // neither the image nor the server
  chrome.storage.sync.data.allowBytes = false;
});

test("Check the server follows no redirect, and says so", async () => {
  await consent();
  redirecting = true;
  try {
    const check = await send({ type: "check-server" }, POPUP);
    assert.equal(check.ok, false);
    assert.match(check.message, /redirect/);
    const asked = log.server.filter((r) => r.url.endsWith("/readyz")).slice(-2);
    assert.deepEqual(asked.map((r) => r.init.redirect), ["error", "manual"]);
    assert.equal(asked[1].init.headers, undefined); // the probe carries no API key
  } finally {
    redirecting = false;
  }
});

test("consent kept in storage.local: withdrawing it there unregisters the content script", async () => {
  await consent();
  granted = ["http://127.0.0.1/*"];
  await send({ type: "sync" }, POPUP);
  assert.equal(chrome.scripting.scripts.length, 1);
  withdraw();
  await Promise.all(chrome.storage.onChanged.fire({ consented: { newValue: false } }, "local"));
  await sleep(20);
  assert.equal(chrome.scripting.scripts.length, 0);
  granted = [];
});

test("the opt-in check of authors' alts: no alt leaves while it is off; switching it tells every frame", async () => {
  // issue 23: an author's alt is page content; it reaches the server only with checkAlt on.
  await consent();
  await resetTab7();
  assert.equal((await send({ type: "hello" })).checkAlt, false); // off by default
  log.server.length = 0;
  const image = { id: "c1", url: "https://example.com/team.jpg", alt: "The team in Lisbon" };
  let answer = await send({ type: "describe", images: [image] });
  assert.equal(answer.results[0].error.code, "alt_check_off");
  assert.equal(log.server.length, 0);

  chrome.storage.sync.data.checkAlt = true;
  try {
    assert.equal((await send({ type: "hello" })).checkAlt, true);
    answer = await send({ type: "describe", images: [image] });
    assert.equal(answer.results[0].caption, "A cat on a sofa.");
    assert.deepEqual(JSON.parse(log.server.at(-1).init.body).images, [{ url: image.url, alt: image.alt }]);

    // Switched off in the options: every frame of every tab running AltCap hears it at once.
    tab7.set(0, { showing: true, found: 0, described: 0, failed: 0 });
    tab7.set(3, { showing: true, found: 0, described: 0, failed: 0 });
    for (const frameId of [0, 3]) await send({ type: "hello" }, frame(frameId));
    log.tabMessages.length = 0;
    chrome.storage.onChanged.fire({ checkAlt: { oldValue: true, newValue: false } }, "sync");
    await until(() => log.tabMessages.filter((m) => m.tabId === 7).length === 2);
    const told = log.tabMessages.filter((m) => m.tabId === 7);
    assert.deepEqual(told.map((m) => [m.options.frameId, m.message]), [[0, { type: "check-alt", on: false }], [3, { type: "check-alt", on: false }]]);
    // Other settings tell the frames nothing.
    log.tabMessages.length = 0;
    chrome.storage.onChanged.fire({ prefix: { newValue: "AI: " } }, "sync");
    await sleep(20);
    assert.deepEqual(log.tabMessages.filter((m) => m.message.type === "check-alt"), []);
  } finally {
    delete chrome.storage.sync.data.checkAlt;
  }
});

async function until(condition, timeoutMs = 2000) {
  const end = Date.now() + timeoutMs;
  while (!condition() && Date.now() < end) await sleep(5);
}

test("Read text in images: on by default; off, hello says so and every request asks for no text", async () => {
  await consent();
  assert.equal((await send({ type: "hello" })).readText, true);
  log.server.length = 0;
  await send({ type: "describe", images: [{ id: "r1", url: "https://example.com/read-on.jpg" }] });
  assert.deepEqual(JSON.parse(log.server.at(-1).init.body), { images: [{ url: "https://example.com/read-on.jpg" }] });

  chrome.storage.sync.data.readText = false;
  try {
    // The content script leaves thin banners alone then (they are written only with their text).
    assert.equal((await send({ type: "hello" })).readText, false);
    // The same image again: not the cached answer (that one had its text read), asked anew.
    await send({ type: "describe", images: [{ id: "r2", url: "https://example.com/read-on.jpg" }] });
    assert.equal(log.server.length, 2);
    assert.deepEqual(JSON.parse(log.server.at(-1).init.body), {
      images: [{ url: "https://example.com/read-on.jpg" }],
      read_text: false,
    });
  } finally {
    delete chrome.storage.sync.data.readText;
  }
});
