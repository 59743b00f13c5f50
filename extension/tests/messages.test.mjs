// messages.js: what the service worker accepts, from whom.

import assert from "node:assert/strict";
import { test } from "node:test";

import { MAX_ALT_LENGTH, MAX_IMAGES_PER_MESSAGE, MAX_URL_LENGTH, validate, validateImage } from "../messages.js";

const IDS = { runtimeId: "abcdefghijklmnop", extensionOrigin: "chrome-extension://abcdefghijklmnop/" };
const CONTENT = { id: IDS.runtimeId, tab: { id: 7, incognito: false }, frameId: 0, url: "https://news.example/article" };
const POPUP = { id: IDS.runtimeId, url: "chrome-extension://abcdefghijklmnop/popup.html" };
const OPTIONS_TAB = { id: IDS.runtimeId, tab: { id: 3 }, url: "chrome-extension://abcdefghijklmnop/options.html" };

const ok = (message, sender = CONTENT) => validate(message, sender, IDS);

test("messages from another extension or with no sender are refused", () => {
  assert.equal(ok({ type: "hello" }, { ...CONTENT, id: "someone-else" }).ok, false);
  assert.equal(ok({ type: "hello" }, { ...CONTENT, id: undefined }).ok, false);
  assert.equal(ok({ type: "hello" }, null).ok, false);
  assert.equal(validate({ type: "hello" }, CONTENT, {}).ok, false); // no runtime id to compare
});

test("only known types, as plain objects", () => {
  assert.equal(ok({ type: "fetch", url: "http://x" }).ok, false);
  assert.equal(ok({ type: "__proto__" }).ok, false);
  assert.equal(ok("hello").ok, false);
  assert.equal(ok(null).ok, false);
  assert.equal(ok([{ type: "hello" }]).ok, false);
  assert.equal(ok({ type: "hello", extra: 1 }).ok, false);
  assert.deepEqual(ok({ type: "hello" }), { ok: true, message: { type: "hello" } });
});

test("content-script types come from tabs, page types from extension pages", () => {
  assert.equal(ok({ type: "hello" }, POPUP).ok, false);
  assert.equal(ok({ type: "hello" }, OPTIONS_TAB).ok, false); // an extension page in a tab
  assert.equal(ok({ type: "describe-tab", tabId: 7 }, CONTENT).ok, false); // pages cannot drive tabs
  assert.equal(ok({ type: "check-server" }, CONTENT).ok, false);
  assert.equal(ok({ type: "sync" }, CONTENT).ok, false);
  assert.equal(ok({ type: "describe-tab", tabId: 7 }, POPUP).ok, true);
  assert.equal(ok({ type: "describe-tab", tabId: 7 }, OPTIONS_TAB).ok, true);
  assert.equal(ok({ type: "check-server" }, POPUP).ok, true);
  assert.equal(ok({ type: "sync" }, POPUP).ok, true);
  // A content script cannot claim an extension URL: the origin must be a prefix.
  assert.equal(ok({ type: "sync" }, { ...CONTENT, url: "https://evil.example/chrome-extension://abcdefghijklmnop/" }).ok, false);
});

test("describe: images are checked and copied clean", () => {
  const result = ok({
    type: "describe",
    images: [
      { id: "i1", url: "https://example.com/cat.jpg" },
      { id: "i2", url: "blob:https://example.com/1234", data: "data:image/jpeg;base64,/9j/AA==" },
    ],
  });
  assert.equal(result.ok, true);
  assert.deepEqual(result.message.images[1], { id: "i2", url: "blob:https://example.com/1234", data: "data:image/jpeg;base64,/9j/AA==" });
  assert.equal(ok({ type: "describe", images: [] }).ok, false);
  assert.equal(ok({ type: "describe", images: "x" }).ok, false);
  assert.equal(ok({ type: "describe", images: [{ id: "a", url: "https://x/a" }, { id: "a", url: "https://x/b" }] }).ok, false);
  const many = Array.from({ length: MAX_IMAGES_PER_MESSAGE + 1 }, (_, i) => ({ id: `i${i}`, url: "https://x/a" }));
  assert.equal(ok({ type: "describe", images: many }).ok, false);
});

test("validateImage refuses bad shapes, schemes and sizes", () => {
  assert.equal(typeof validateImage({ id: "a", url: "javascript:alert(1)" }), "string");
  assert.equal(typeof validateImage({ id: "a", url: "file:///etc/passwd" }), "string");
  assert.equal(typeof validateImage({ id: "a", url: "chrome://settings" }), "string");
  assert.equal(typeof validateImage({ id: "", url: "https://x/a" }), "string");
  assert.equal(typeof validateImage({ id: 5, url: "https://x/a" }), "string");
  assert.equal(typeof validateImage({ id: "a", url: "https://x/a", extra: 1 }), "string");
  assert.equal(typeof validateImage({ id: "a", url: "https://x/" + "a".repeat(MAX_URL_LENGTH) }), "string");
  assert.equal(typeof validateImage({ id: "a", url: "blob:x", data: "data:text/html;base64,AA" }), "string");
  assert.equal(typeof validateImage({ id: "a", url: "blob:x", data: 42 }), "string");
  assert.deepEqual(validateImage({ id: "a", url: "data:image/png;base64," + "A".repeat(20000) }).id, "a"); // long data: URL ok
});

test("an author's alt may ride with an image (the opt-in check): a string that says something", () => {
  const alt = "The team in Lisbon";
  assert.deepEqual(validateImage({ id: "a", url: "https://x/a.jpg", alt }), { id: "a", url: "https://x/a.jpg", alt });
  const data = "data:image/png;base64,AAAA";
  assert.deepEqual(validateImage({ id: "a", url: "blob:x", data, alt }), { id: "a", url: "blob:x", data, alt });
  for (const bad of ["", "   ", 42, null, ["x"], "x".repeat(MAX_ALT_LENGTH + 1)]) {
    assert.equal(typeof validateImage({ id: "a", url: "https://x/a.jpg", alt: bad }), "string", String(bad).slice(0, 10));
  }
});

test("counts and describe-tab need integers", () => {
  assert.equal(ok({ type: "counts", found: 3, described: 2, failed: 1 }).ok, true);
  // unsure (no confident description) is counted too; a content script of before sends none
  assert.deepEqual(ok({ type: "counts", found: 3, described: 1, failed: 1, unsure: 1 }).message, { type: "counts", found: 3, described: 1, failed: 1, unsure: 1, suspect: 0 });
  assert.equal(ok({ type: "counts", found: 3, described: 2, failed: 1 }).message.unsure, 0);
  assert.equal(ok({ type: "counts", found: 3, described: 2, failed: 1, unsure: -1 }).ok, false);
  // suspect (authors' alts noted as possibly not matching, the opt-in check) likewise
  assert.deepEqual(ok({ type: "counts", found: 0, described: 0, failed: 0, unsure: 0, suspect: 2 }).message, { type: "counts", found: 0, described: 0, failed: 0, unsure: 0, suspect: 2 });
  assert.equal(ok({ type: "counts", found: 0, described: 0, failed: 0, suspect: 0.5 }).ok, false);
  assert.equal(ok({ type: "counts", found: -1, described: 0, failed: 0 }).ok, false);
  assert.equal(ok({ type: "counts", found: 1.5, described: 0, failed: 0 }).ok, false);
  assert.equal(ok({ type: "counts", found: "3", described: 0, failed: 0 }).ok, false);
  assert.equal(ok({ type: "describe-tab", tabId: "7" }, POPUP).ok, false);
  assert.equal(ok({ type: "describe-tab", tabId: -1 }, POPUP).ok, false);
});

test("the popup's per-tab messages: from extension pages only, with a tab id", () => {
  for (const type of ["tab-status", "tab-toggle", "tab-restore"]) {
    assert.deepEqual(ok({ type, tabId: 7 }, POPUP), { ok: true, message: { type, tabId: 7 } });
    assert.equal(ok({ type, tabId: 7 }, CONTENT).ok, false); // a frame cannot switch its tab
    assert.equal(ok({ type }, POPUP).ok, false);
    assert.equal(ok({ type, tabId: 7, showing: true }, POPUP).ok, false);
  }
});
