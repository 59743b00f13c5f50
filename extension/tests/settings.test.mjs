// settings.js: validation, site lists, match patterns, storage split.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  DEFAULTS,
  contentScriptMatches,
  coversAllSites,
  hostMatches,
  hostPattern,
  isPlainHttpElsewhere,
  loadSettings,
  normalizeHost,
  normalizeServerUrl,
  normalizeSettings,
  originPattern,
  parseHostList,
  saveSettings,
  secretStore,
  siteRule,
  withSite,
} from "../settings.js";

test("defaults are the documented ones", () => {
  assert.equal(DEFAULTS.serverUrl, "http://127.0.0.1:8000");
  assert.equal(DEFAULTS.prefix, "Appears to be: ");
  assert.equal(DEFAULTS.textPrefix, "Appears to say: "); // before an image's own text
  assert.equal(DEFAULTS.mode, "auto");
  assert.equal(DEFAULTS.allowBytes, false);
  assert.equal(DEFAULTS.checkAlt, false); // authors' alts are sent for checking only when asked
  assert.equal(DEFAULTS.readText, true); // the server reads the text in images unless told not to
  assert.equal(DEFAULTS.consented, false);
  assert.deepEqual(normalizeSettings({}), { ...DEFAULTS, sitesAlways: [], sitesNever: [] });
});

test("server URLs", () => {
  assert.equal(normalizeServerUrl(" http://127.0.0.1:8000/ "), "http://127.0.0.1:8000");
  assert.equal(normalizeServerUrl("https://altcap.example/base//"), "https://altcap.example/base");
  assert.equal(normalizeServerUrl("ftp://x"), null);
  assert.equal(normalizeServerUrl("http://user:pw@x"), null);
  assert.equal(normalizeServerUrl("http://x/?a=1"), null);
  assert.equal(normalizeServerUrl("not a url"), null);
  assert.equal(normalizeServerUrl(""), null);
});

test("hosts as users type them", () => {
  assert.equal(normalizeHost("Example.com"), "example.com");
  assert.equal(normalizeHost("https://www.example.com/page?x"), "www.example.com");
  assert.equal(normalizeHost("*.example.com"), "example.com");
  assert.equal(normalizeHost("localhost:8080"), "localhost");
  assert.equal(normalizeHost("127.0.0.1:5000"), "127.0.0.1");
  assert.equal(normalizeHost("[::1]:80"), "[::1]");
  assert.equal(normalizeHost("bücher.de"), "xn--bcher-kva.de");
  assert.equal(normalizeHost("file:///x"), null);
  assert.equal(normalizeHost("exa mple"), null);
  assert.equal(normalizeHost(""), null);
  assert.deepEqual(parseHostList("example.com\n\n EXAMPLE.com, news.example  bad host!\n"), {
    hosts: ["example.com", "news.example", "bad"],
    invalid: ["host!"],
  });
  assert.deepEqual(parseHostList("ok.example\nhttp://[zz]").invalid, ["http://[zz]"]);
});

test("site rules: subdomains count, never wins", () => {
  const s = { sitesAlways: ["example.com", "127.0.0.1"], sitesNever: ["ads.example.com"] };
  assert.equal(siteRule(s, "example.com"), "always");
  assert.equal(siteRule(s, "www.example.com"), "always");
  assert.equal(siteRule(s, "ads.example.com"), "never");
  assert.equal(siteRule(s, "x.ads.example.com"), "never");
  assert.equal(siteRule(s, "notexample.com"), "default");
  assert.equal(siteRule(s, "127.0.0.1"), "always");
  assert.equal(hostMatches("1127.0.0.1", "127.0.0.1"), false);
  assert.equal(hostMatches("a.localhost", "localhost"), false); // as its match pattern
});

test("match patterns", () => {
  assert.equal(hostPattern("example.com"), "*://*.example.com/*");
  assert.equal(hostPattern("127.0.0.1"), "*://127.0.0.1/*");
  assert.equal(hostPattern("localhost"), "*://localhost/*");
  assert.equal(hostPattern("[::1]"), "*://[::1]/*");
  assert.equal(originPattern("http://127.0.0.1:8000/base"), "http://127.0.0.1/*");
  assert.equal(coversAllSites(["<all_urls>"]), true);
  assert.equal(coversAllSites(["http://*/*", "https://*/*"]), true);
  assert.equal(coversAllSites(["*://*.example.com/*"]), false);
});

test("where the content script is registered", () => {
  const base = normalizeSettings({ consented: true, sitesAlways: ["example.com"], sitesNever: ["bad.example"] });
  assert.deepEqual(contentScriptMatches({ ...base, consented: false }, ["<all_urls>"]), { matches: [], excludeMatches: [] });
  assert.deepEqual(contentScriptMatches(base, ["<all_urls>"]), {
    matches: ["http://*/*", "https://*/*"],
    excludeMatches: ["*://*.bad.example/*"],
  });
  assert.deepEqual(contentScriptMatches(base, ["http://127.0.0.1/*", "*://*.example.com/*"]).matches, [
    "*://*.example.com/*",
    "http://127.0.0.1/*",
  ]);
  const onDemand = { ...base, mode: "on-demand" };
  assert.deepEqual(contentScriptMatches(onDemand, ["<all_urls>"]).matches, ["*://*.example.com/*"]);
});

test("normalizeSettings drops what it cannot trust", () => {
  const s = normalizeSettings({
    serverUrl: "javascript:alert(1)",
    prefix: 5,
    textPrefix: ["Says: "],
    mode: "sometimes",
    sitesAlways: ["Example.com", "example.com", "bad host", 3],
    allowBytes: "yes",
    consented: "true",
  });
  assert.equal(s.serverUrl, DEFAULTS.serverUrl);
  assert.equal(s.prefix, DEFAULTS.prefix);
  assert.equal(s.textPrefix, DEFAULTS.textPrefix);
  assert.equal(s.mode, "auto");
  assert.deepEqual(s.sitesAlways, ["example.com"]);
  assert.equal(s.allowBytes, false);
  assert.equal(s.consented, false);
  assert.equal(normalizeSettings({ prefix: "x".repeat(500) }).prefix.length, 80);
  assert.equal(normalizeSettings({ textPrefix: "x".repeat(500) }).textPrefix.length, 80);
  assert.equal(normalizeSettings({ textPrefix: "" }).textPrefix, ""); // no mark: the user's choice
});

test("readText: off only when stored as false", () => {
  assert.equal(normalizeSettings({ readText: false }).readText, false);
  for (const value of [true, undefined, "false", 0, null]) {
    assert.equal(normalizeSettings({ readText: value }).readText, true, String(value));
  }
});

test("checkAlt: on only when stored as true", () => {
  assert.equal(normalizeSettings({ checkAlt: true }).checkAlt, true);
  for (const odd of [false, "true", 1, null, undefined, {}]) assert.equal(normalizeSettings({ checkAlt: odd }).checkAlt, false, String(odd));
});

test("withSite moves a host between the lists", () => {
  const s = { sitesAlways: ["a.example"], sitesNever: ["b.example"] };
  assert.deepEqual(withSite(s, "b.example", true), { sitesAlways: ["a.example", "b.example"], sitesNever: [] });
  assert.deepEqual(withSite(s, "a.example", false), { sitesAlways: [], sitesNever: ["b.example", "a.example"] });
});

function fakeStorage() {
  const area = () => {
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
    };
  };
  return { sync: area(), local: area(), session: area() };
}

/** A secret store as secretStore() makes one, in memory (IndexedDB in the browser). */
function fakeSecrets() {
  const data = {};
  return {
    data,
    async get(name) {
      return data[name];
    },
    async set(name, value) {
      data[name] = value;
      return "disk";
    },
  };
}

test("the API key is kept in the extension's own store, never in storage.local or sync", async () => {
  // Firefox lets content scripts read storage.local (Chrome does not, after setAccessLevel);
  // IndexedDB of the extension's own origin no content script can open, in either browser.
  const storage = fakeStorage();
  const secrets = fakeSecrets();
  const saved = await saveSettings({ serverUrl: "https://altcap.example", apiKey: "s3cret", junk: 1 }, storage, secrets);
  assert.deepEqual(storage.sync.data, { serverUrl: "https://altcap.example" });
  assert.deepEqual(storage.local.data, {});
  assert.deepEqual(secrets.data, { apiKey: "s3cret" });
  assert.equal(saved.apiKeyKept, "disk");
  const loaded = await loadSettings(storage, secrets);
  assert.equal(loaded.apiKey, "s3cret");
  assert.equal(loaded.serverUrl, "https://altcap.example");
});

test("an API key an older version left in storage.local moves to the secret store", async () => {
  const storage = fakeStorage();
  const secrets = fakeSecrets();
  storage.local.data.apiKey = "old-key";
  assert.equal((await loadSettings(storage, secrets)).apiKey, "old-key");
  assert.deepEqual(storage.local.data, {});
  assert.deepEqual(secrets.data, { apiKey: "old-key" });
});

test("without IndexedDB the key is kept for the session only, where content scripts cannot read it", async () => {
  const storage = fakeStorage();
  const broken = {
    async get() {
      throw new Error("IndexedDB is not available here");
    },
    async set() {
      throw new Error("IndexedDB is not available here");
    },
  };
  const store = secretStore(storage, broken);
  const saved = await saveSettings({ apiKey: "k" }, storage, store);
  assert.equal(saved.apiKeyKept, "session");
  assert.deepEqual(storage.session.data, { apiKey: "k" });
  assert.deepEqual(storage.local.data, {});
  assert.equal((await loadSettings(storage, store)).apiKey, "k");
});

test("consent is this browser's (storage.local), given for one server", async () => {
  const storage = fakeStorage();
  const secrets = fakeSecrets();
  await saveSettings({ serverUrl: "https://altcap.example", consented: true }, storage, secrets);
  assert.deepEqual(storage.sync.data, { serverUrl: "https://altcap.example" }); // nothing to roam
  assert.deepEqual(storage.local.data, { consented: true, consentedServer: "https://altcap.example" });
  assert.equal((await loadSettings(storage, secrets)).consented, true);
  // Another browser of the same user gets the synced settings but not the consent.
  const other = fakeStorage();
  Object.assign(other.sync.data, storage.sync.data);
  assert.equal((await loadSettings(other, fakeSecrets())).consented, false);
  // A server address synced from elsewhere is not the one agreed to here.
  storage.sync.data.serverUrl = "https://elsewhere.example";
  assert.equal((await loadSettings(storage, secrets)).consented, false);
  storage.sync.data.serverUrl = "https://altcap.example";
  await saveSettings({ consented: false }, storage, secrets);
  assert.equal((await loadSettings(storage, secrets)).consented, false);
});

test("a consent an older version kept in storage.sync moves here once, and leaves sync", async () => {
  const storage = fakeStorage();
  Object.assign(storage.sync.data, { serverUrl: "https://altcap.example", consented: true });
  assert.equal((await loadSettings(storage, fakeSecrets())).consented, true);
  assert.deepEqual(storage.local.data, { consented: true, consentedServer: "https://altcap.example" });
  assert.equal("consented" in storage.sync.data, false);
  // Once moved, a synced value (an older version elsewhere) is not taken again.
  await saveSettings({ consented: false }, storage, fakeSecrets());
  storage.sync.data.consented = true;
  assert.equal((await loadSettings(storage, fakeSecrets())).consented, false);
});

test("a plain http:// server on another computer is flagged; loopback and https are not", () => {
  for (const url of ["http://altcap.example:8000", "http://192.168.1.20:8000", "http://10.0.0.1", "http://[fd00::1]:8000"]) {
    assert.equal(isPlainHttpElsewhere(url), true, url);
  }
  for (const url of ["https://altcap.example", "http://127.0.0.1:8000", "http://127.8.9.10", "http://localhost:8000", "http://api.localhost", "http://[::1]:8000", "not a url"]) {
    assert.equal(isPlainHttpElsewhere(url), false, url);
  }
});
