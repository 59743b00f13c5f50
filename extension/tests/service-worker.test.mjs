// service-worker.js wired to a fake `chrome` and a fake fetch: the consent gate (nothing
// reaches the server before consent), message validation, captions, badge, registration
// of the content script, the shortcut and the context menu.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { EXTENSION_DIR } from "./fake-dom.mjs";

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
    async setAccessLevel() {},
  };
}

const log = { server: [], badge: [], registered: [], executed: [], tabMessages: [], optionsOpened: 0, menus: [] };
let granted = [];
let contentScriptPresent = false;

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
  storage: { sync: area(), local: area(), onChanged: event() },
  permissions: { getAll: async () => ({ origins: granted, permissions: [] }), onAdded: event(), onRemoved: event() },
  scripting: {
    scripts: [],
    async getRegisteredContentScripts() {
      return chrome.scripting.scripts;
    },
    async unregisterContentScripts() {
      chrome.scripting.scripts = [];
    },
    async registerContentScripts(scripts) {
      chrome.scripting.scripts = scripts;
      log.registered.push(scripts);
    },
    async executeScript(details) {
      log.executed.push(details);
      contentScriptPresent = true;
      return [];
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
    async sendMessage(tabId, message, options) {
      log.tabMessages.push({ tabId, message, options });
      if (!contentScriptPresent) throw new Error("Could not establish connection. Receiving end does not exist.");
      if (message.type === "ping") return { pong: true };
      return { ok: true, found: 1, described: 0, failed: 0 };
    },
  },
};

globalThis.chrome = chrome;
globalThis.fetch = async (url, init = {}) => {
  if (url.startsWith(ORIGIN)) {
    return new Response(fs.readFileSync(path.join(EXTENSION_DIR, url.slice(ORIGIN.length))));
  }
  log.server.push({ url, init });
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

async function consent(extra = {}) {
  Object.assign(chrome.storage.sync.data, { consented: true, ...extra });
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
  assert.equal(JSON.stringify(hello).includes("k-123"), false); // the key never reaches a page
  const answer = await send({ type: "describe", images: [{ id: "i1", url: "https://example.com/cat.jpg" }] });
  assert.deepEqual(answer.results, [{ id: "i1", caption: "A cat on a sofa.", cached: false }]);
  assert.equal(log.server.length, 1);
  assert.equal(log.server[0].url, "http://127.0.0.1:8000/v1/captions");
  assert.equal(log.server[0].init.headers.Authorization, "Bearer k-123");
  await send({ type: "counts", found: 3, described: 2, failed: 1 });
  assert.deepEqual(log.badge.at(-1), { tabId: 5, text: "2" });
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
  assert.deepEqual(script.js, ["detection.js", "content-script.js"]);
  assert.deepEqual(script.excludeMatches, ["*://*.ads.example/*"]);

  chrome.storage.sync.data.consented = false;
  assert.deepEqual((await send({ type: "sync" }, POPUP)).matches, []);
  assert.equal(chrome.scripting.scripts.length, 0);
  granted = [];
});

test("describe-tab injects through activeTab, then asks the page", async () => {
  await consent();
  contentScriptPresent = false;
  log.tabMessages.length = 0;
  const answer = await send({ type: "describe-tab", tabId: 5 }, POPUP);
  assert.equal(answer.ok, true);
  assert.deepEqual(log.executed.at(-1), { target: { tabId: 5, frameIds: [0] }, files: ["detection.js", "content-script.js"] });
  assert.deepEqual(log.tabMessages.map((m) => m.message.type), ["ping", "describe-now"]);
});

test("the shortcut describes the active tab; without consent it opens the options", async () => {
  await consent();
  log.tabMessages.length = 0;
  await Promise.all(chrome.commands.onCommand.fire("describe-page", { id: 9 }));
  assert.deepEqual(log.tabMessages.at(-1), { tabId: 9, message: { type: "describe-now" }, options: { frameId: 0 } });

  chrome.storage.sync.data.consented = false;
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
