// network.js: chunking, back-off, the server protocol, the cache and the bytes fall-backs,
// all against a fake fetch (nothing leaves the machine).

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  CaptionClient,
  CaptionError,
  MAX_RESPONSE_BYTES,
  MAX_RETRIES,
  chunk,
  isIntranetUrl,
  languageName,
  parseRetryAfter,
  postCaptions,
  MAX_SERVER_CHARS,
  readJson,
  readResult,
  requestBody,
  retryDelay,
} from "../network.js";

const SERVER = { serverUrl: "http://127.0.0.1:8000", apiKey: "" };

function json(status, body, headers = {}) {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json", ...headers } });
}

/** A fake server: answers each POST with a caption per image (or what `respond` says). */
function fakeServer(respond) {
  const calls = [];
  const fetch = async (url, init = {}) => {
    const body = init.body ? JSON.parse(init.body) : null;
    calls.push({ url, init, body });
    return respond({ url, init, body, n: calls.length });
  };
  return { calls, fetch };
}

function captionAll({ body }) {
  return json(200, {
    model: "tiny",
    results: body.images.map((image) => ({
      caption: `About ${image.url || "bytes " + image.data.slice(0, 8)}.`,
      tokens: 3,
      cached: false,
      source: {},
    })),
  });
}

const noSleep = { sleep: async () => {}, random: () => 0 };

test("chunk: by count and by size, never empty, big items alone", () => {
  const items = Array.from({ length: 70 }, (_, i) => i);
  assert.deepEqual(chunk(items, 32).map((c) => c.length), [32, 32, 6]);
  assert.deepEqual(chunk([], 32), []);
  const sized = chunk([5, 5, 20, 5], 32, 10, (n) => n);
  assert.deepEqual(sized, [[5, 5], [20], [5]]);
});

test("Retry-After as seconds or HTTP date; back-off otherwise", () => {
  assert.equal(parseRetryAfter("7"), 7000);
  assert.equal(parseRetryAfter(" 0 "), 0);
  const now = Date.parse("2025-01-01T00:00:00Z");
  assert.equal(parseRetryAfter("Wed, 01 Jan 2025 00:00:05 GMT", now), 5000);
  assert.equal(parseRetryAfter("Tue, 31 Dec 2024 00:00:00 GMT", now), 0); // in the past
  assert.equal(parseRetryAfter("soon"), null);
  assert.equal(parseRetryAfter(null), null);
  assert.equal(retryDelay(0, "3"), 3000);
  assert.deepEqual([0, 1, 2].map((a) => retryDelay(a, null, { random: () => 0 })), [500, 1000, 2000]);
  assert.equal(retryDelay(0, null, { random: () => 1 }), 625); // at most 25% jitter
});

test("intranet URLs", () => {
  for (const url of [
    "http://localhost/a.png",
    "http://intranet/a.png",
    "http://10.1.2.3/a.png",
    "http://172.20.0.1/a.png",
    "http://192.168.1.1/a.png",
    "http://127.0.0.1:8080/a.png",
    "http://2130706433/a.png", // 127.0.0.1, as URL() normalises it
    "http://[::1]/a.png",
    "http://[fd00::1]/a.png",
    "http://[::ffff:192.168.0.1]/a.png",
    "http://wiki.corp/a.png",
    "http://printer.local/a.png",
  ]) {
    assert.equal(isIntranetUrl(url), true, url);
  }
  for (const url of ["https://example.com/a.png", "http://8.8.8.8/a.png", "http://172.32.0.1/a", "http://[2001:db8::1]/a", "nonsense"]) {
    assert.equal(isIntranetUrl(url), false, url);
  }
});

test("postCaptions sends the documented request and reads the results", async () => {
  const server = fakeServer(({ body }) =>
    json(200, {
      results: [
        { caption: "A cat.", tokens: 3, cached: true, source: {} },
        { error: { code: "not_an_image", message: "nope" }, source: {} },
      ],
    }),
  );
  const results = await postCaptions(
    [{ url: "https://example.com/cat.jpg" }, { data: "AAAA" }],
    { serverUrl: "http://127.0.0.1:8000/", apiKey: "k1" },
    { fetch: server.fetch, ...noSleep },
  );
  assert.deepEqual(results, [
    { caption: "A cat.", alt: "A cat.", alt_from: "caption", cached: true },
    { error: { code: "not_an_image", message: "nope" } },
  ]);
  const [call] = server.calls;
  assert.equal(call.url, "http://127.0.0.1:8000/v1/captions");
  assert.equal(call.init.method, "POST");
  assert.equal(call.init.headers.Authorization, "Bearer k1");
  assert.equal(call.init.credentials, "omit");
  // No redirect is followed: a 307 would send the body (image addresses or bytes) on to
  // wherever it points, and "Check the server" would report that other server ready.
  assert.equal(call.init.redirect, "error");
  assert.deepEqual(call.body, { images: [{ url: "https://example.com/cat.jpg" }, { data: "AAAA" }] });
});

test("an answer larger than MAX_RESPONSE_BYTES is dropped unread, however it comes", { timeout: 20_000 }, async () => {
  const chunkBytes = 64 * 1024;
  let pulled = 0;
  let cancelled = false;
  // 8 MiB of spaces, then a well-formed answer: valid JSON, twice the limit
  const answer = new TextEncoder().encode(JSON.stringify({ results: [{ caption: "A cat." }] }));
  const endless = () =>
    new Response(
      new ReadableStream({
        pull(controller) {
          pulled += 1;
          if (pulled > (2 * MAX_RESPONSE_BYTES) / chunkBytes) {
            controller.enqueue(answer);
            controller.close();
          } else {
            controller.enqueue(new Uint8Array(chunkBytes).fill(0x20));
          }
        },
        cancel() {
          cancelled = true;
        },
      }),
      { status: 200, headers: { "Content-Type": "application/json" } },
    );
  const server = fakeServer(endless);
  await assert.rejects(
    postCaptions([{ url: "https://example.com/a.png" }], SERVER, { fetch: server.fetch, ...noSleep }),
    (err) => err instanceof CaptionError && err.code === "bad_response" && /more than 4 MiB/.test(err.message),
  );
  assert.equal(cancelled, true);
  assert.ok(pulled * chunkBytes <= MAX_RESPONSE_BYTES + 3 * chunkBytes, `read ${pulled} chunks`);
  // A declared length over the limit is refused before reading anything.
  let read = false;
  const declared = new Response(
    new ReadableStream({
      pull(controller) {
        read = true;
        controller.close();
      },
    }),
    { status: 200, headers: { "Content-Length": String(MAX_RESPONSE_BYTES + 1) } },
  );
  await assert.rejects(readJson(declared), (err) => err.code === "bad_response");
  assert.equal(read, false);
  // Under the limit: the JSON as before; a body that is not JSON, or breaks off: null.
  assert.deepEqual(await readJson(json(200, { results: [] })), { results: [] });
  assert.equal(await readJson(new Response("<html>")), null);
  const broken = new Response(
    new ReadableStream({
      pull(controller) {
        controller.error(new TypeError("network error"));
      },
    }),
  );
  assert.equal(await readJson(broken), null);
  assert.deepEqual(await readJson(json(200, { a: "é".repeat(10) }), 64), { a: "é".repeat(10) });
  await assert.rejects(readJson(json(200, { a: "x".repeat(100) }), 64), (err) => err.code === "bad_response");
});

// --- issue 22: the text in images ------------------------------------------------------------

test("readResult: the server's alt, what it was made of, its text and warnings", () => {
  // An image that is mostly text (a banner): its alt is its text.
  assert.deepEqual(
    readResult(
      { caption: "a sign on a wall", text: "SALE\n50% OFF", alt: "SALE 50% OFF", alt_from: "text", warnings: [], cached: false },
      "en",
    ),
    { caption: "a sign on a wall", alt: "SALE 50% OFF", alt_from: "text", text: "SALE\n50% OFF", cached: false, language: "en" },
  );
  // A picture with some text: the caption, then the text.
  const both = "A shop window. Appears to say: Summer sale";
  assert.deepEqual(readResult({ caption: "A shop window", text: "Summer sale", alt: both, alt_from: "caption_and_text" }), {
    caption: "A shop window",
    alt: both,
    alt_from: "caption_and_text",
    text: "Summer sale",
    cached: false,
  });
  // Text that was looked for and not found, and text reading that ran out of time.
  assert.deepEqual(readResult({ caption: "A dog.", text: "", alt: "A dog.", alt_from: "caption" }), {
    caption: "A dog.",
    alt: "A dog.",
    alt_from: "caption",
    text: "",
    cached: false,
  });
  const late = readResult({ caption: "A dog.", alt: "A dog.", alt_from: "caption", warnings: ["ocr_timeout", 7, "<b>", "x".repeat(80)] });
  assert.deepEqual(late.warnings, ["ocr_timeout"]); // codes only
  assert.equal("text" in late, false); // not read: no text, not ""
  // An image of text the model found no words for: the text alone describes it.
  assert.deepEqual(readResult({ caption: "", text: "EXIT", alt: "EXIT", alt_from: "text" }), {
    caption: "",
    alt: "EXIT",
    alt_from: "text",
    text: "EXIT",
    cached: false,
  });
});

test("readResult: without a usable alt, the caption is the alt (servers from before issue 22)", () => {
  const caption = { caption: "  A cat.  ", alt: "A cat.", alt_from: "caption", cached: false };
  for (const alt of [undefined, null, 42, ["A cat."], { text: "x" }, "", "   "]) {
    const r = readResult({ caption: "  A cat.  ", alt, alt_from: "text" });
    assert.deepEqual(r, { ...caption, caption: "A cat." }, JSON.stringify(alt));
  }
  // An alt_from this extension does not know is marked as a caption.
  for (const altFrom of [undefined, "ocr", 1, "TEXT"]) {
    assert.equal(readResult({ caption: "A cat.", alt: "CAT", alt_from: altFrom }).alt_from, "caption", String(altFrom));
  }
  // Neither says anything: no description.
  assert.equal(readResult({ caption: " ", alt: "" }).error.code, "bad_response");
  assert.equal(readResult({ alt: 5 }).error.code, "bad_response");
});

test("client: the cache keeps the alt, what it was made of and the text with the caption", async () => {
  const server = fakeServer(({ body }) =>
    json(200, {
      language: "en",
      results: body.images.map(() => ({ caption: "a sign", text: "SALE\n50% OFF", alt: "SALE 50% OFF", alt_from: "text", cached: false })),
    }),
  );
  const client = new CaptionClient({ fetch: server.fetch, ...noSleep });
  const url = "https://example.com/sale.png";
  const described = { caption: "a sign", alt: "SALE 50% OFF", alt_from: "text", text: "SALE\n50% OFF", language: "en" };
  assert.deepEqual(await client.describe([{ id: "a", url }], SETTINGS), [{ id: "a", ...described, cached: false }]);
  // From the cache: still text, still "Appears to say", with no second request.
  assert.deepEqual(await client.describe([{ id: "b", url }], SETTINGS), [{ id: "b", ...described, cached: true }]);
  assert.equal(server.calls.length, 1);
  assert.deepEqual(server.calls[0].body, { images: [{ url }] }); // text reading: the server's default
});

// --- what a server may send: capped in the worker ---------------------------------------------

test("readResult: a server's caption, alt, text and error message are capped as they arrive", () => {
  // A server that is not AltCap's own code may answer megabytes: the worker keeps (caches,
  // hands to a page) at most MAX_SERVER_CHARS code points of each, cut at a word with "…".
  assert.equal(MAX_SERVER_CHARS, 250); // what docs/extension.md says
  const words = "a red circle on a white background ".repeat(30_000); // ~1 MB
  const r = readResult({ caption: words, alt: "SALE " + words, alt_from: "caption_and_text", text: "SALE\n" + words });
  for (const field of ["caption", "alt", "text"]) {
    const value = r[field];
    assert.ok([...value].length <= MAX_SERVER_CHARS, `${field}: ${[...value].length}`);
    assert.ok([...value].length > MAX_SERVER_CHARS / 2, field); // cut at a word, not to nothing
    assert.ok(value.endsWith("\u2026"), field);
    const head = value.slice(0, -1);
    assert.ok(words.includes(head.replace(/^SALE\s/, "")), `${field} is cut between two words: ${head.slice(-20)}`);
    assert.match(head, /(circle|red|on|a|white|background)$/, field);
  }
  assert.ok(r.text.startsWith("SALE\n")); // its lines kept
  assert.equal(r.alt_from, "caption_and_text");
  // One word of a megabyte: cut between two characters.
  const long = readResult({ caption: "x".repeat(1_000_000) });
  assert.equal([...long.caption].length, MAX_SERVER_CHARS);
  assert.equal(long.alt, long.caption);
  // What does not leave room for anything readable is no caption (as in the content script).
  assert.equal(readResult({ caption: "\u202e\u200b".repeat(1000) }).error.code, "bad_response");
  // A server's error message (never announced, but passed on) is capped too.
  const error = readResult({ error: { code: "fetch_failed", message: "no ".repeat(500_000) } }).error;
  assert.equal(error.code, "fetch_failed");
  assert.ok([...error.message].length <= MAX_SERVER_CHARS);
});

test("client: an answer of megabytes is cached capped", async () => {
  const huge = "A dog on a couch. ".repeat(60_000);
  const server = fakeServer(({ body }) =>
    json(200, { results: body.images.map(() => ({ caption: huge, text: huge, alt: huge, alt_from: "caption", cached: false })) }),
  );
  const client = new CaptionClient({ fetch: server.fetch, ...noSleep });
  const url = "https://example.com/dog.jpg";
  const [first] = await client.describe([{ id: "a", url }], SETTINGS);
  const [again] = await client.describe([{ id: "b", url }], SETTINGS);
  assert.equal(server.calls.length, 1);
  for (const r of [first, again]) {
    for (const field of ["caption", "alt", "text"]) assert.ok([...r[field]].length <= MAX_SERVER_CHARS, field);
  }
  const kept = [...client.cache.values()].map((entry) => JSON.stringify(entry.answer).length);
  assert.ok(Math.max(...kept) < 4 * MAX_SERVER_CHARS, String(kept));
});

// --- "Read text in images" -------------------------------------------------------------------

test("requestBody: read_text false only when reading text is off", () => {
  const images = [{ url: "https://example.com/a.png" }];
  assert.deepEqual(JSON.parse(requestBody(images)), { images });
  assert.deepEqual(JSON.parse(requestBody(images, { readText: true })), { images });
  assert.deepEqual(JSON.parse(requestBody(images, { readText: false })), { images, read_text: false });
});

test("client: with reading text off, requests say read_text false and answers are cached apart", async () => {
  const server = fakeServer(({ body }) =>
    json(200, {
      results: body.images.map(() =>
        body.read_text === false
          ? { caption: "a sign", alt: "a sign", alt_from: "caption", cached: false }
          : { caption: "a sign", text: "EXIT", alt: "EXIT", alt_from: "text", cached: false },
      ),
    }),
  );
  const client = new CaptionClient({ fetch: server.fetch, ...noSleep });
  const url = "https://example.com/exit.png";
  const [on] = await client.describe([{ id: "a", url }], SETTINGS);
  assert.equal(on.alt_from, "text");
  const off = { ...SETTINGS, readText: false };
  const [read] = await client.describe([{ id: "b", url }], off);
  assert.equal(server.calls.length, 2); // not the answer that read the text
  assert.deepEqual(server.calls[1].body, { images: [{ url }], read_text: false });
  assert.deepEqual([read.alt, read.alt_from, "text" in read], ["a sign", "caption", false]);
  // Each is cached for its own setting.
  assert.equal((await client.describe([{ id: "c", url }], off))[0].alt, "a sign");
  assert.equal((await client.describe([{ id: "d", url }], SETTINGS))[0].alt, "EXIT");
  assert.equal(server.calls.length, 2);
  // postCaptions itself: the body says it, and nothing else changes.
  const direct = fakeServer(captionAll);
  await postCaptions([{ url }], { ...SERVER, readText: false }, { fetch: direct.fetch, ...noSleep });
  assert.deepEqual(direct.calls[0].body, { images: [{ url }], read_text: false });
});

test("429 and 503: wait as Retry-After says, then succeed", async () => {
  const waits = [];
  const server = fakeServer(({ body, n }) => {
    if (n === 1) return json(429, { error: { code: "rate_limited", message: "slow down" } }, { "Retry-After": "2" });
    if (n === 2) return json(503, { error: { code: "overloaded", message: "busy" } }, { "Retry-After": "1" });
    return captionAll({ body });
  });
  const results = await postCaptions([{ url: "https://x/a.png" }], SERVER, {
    fetch: server.fetch,
    sleep: async (ms) => waits.push(ms),
  });
  assert.equal(results[0].caption, "About https://x/a.png.");
  assert.deepEqual(waits, [2000, 1000]);
});

test("retries are capped, then the server's error is reported", async () => {
  const waits = [];
  const server = fakeServer(() => json(503, { error: { code: "overloaded", message: "busy" } }));
  await assert.rejects(
    postCaptions([{ url: "https://x/a.png" }], SERVER, { fetch: server.fetch, sleep: async (ms) => waits.push(ms), random: () => 0 }),
    (err) => err.code === "overloaded" && err.message === "busy",
  );
  assert.equal(server.calls.length, MAX_RETRIES + 1);
  assert.deepEqual(waits, [500, 1000, 2000]);
});

test("a Retry-After longer than the cap is not waited for", async () => {
  const server = fakeServer(() => json(429, { error: { code: "rate_limited", message: "later" } }, { "Retry-After": "120" }));
  await assert.rejects(
    postCaptions([{ url: "https://x/a.png" }], SERVER, { fetch: server.fetch, ...noSleep }),
    (err) => err.code === "rate_limited" && err.retryAfterMs === 120_000,
  );
  assert.equal(server.calls.length, 1);
});

test("server down: retried, then server_unreachable", async () => {
  let tries = 0;
  const fetch = async () => {
    tries++;
    throw new TypeError("Failed to fetch");
  };
  await assert.rejects(
    postCaptions([{ url: "https://x/a.png" }], SERVER, { fetch, ...noSleep }),
    // a redirect refused looks the same to fetch(): the message says so
    (err) => err.code === "server_unreachable" && /does not follow redirects/.test(err.message),
  );
  assert.equal(tries, MAX_RETRIES + 1);
});

test("401 and other client errors are not retried", async () => {
  const server = fakeServer(() => json(401, { error: { code: "unauthorized", message: "enter a valid API key" } }));
  await assert.rejects(postCaptions([{ url: "https://x/a.png" }], SERVER, { fetch: server.fetch, ...noSleep }), (err) => err.code === "unauthorized");
  assert.equal(server.calls.length, 1);
  const html = fakeServer(() => new Response("<html>proxy error</html>", { status: 400 }));
  await assert.rejects(postCaptions([{ url: "https://x/a.png" }], SERVER, { fetch: html.fetch, ...noSleep }), (err) => err.code === "http_400");
});

test("a malformed answer is an error, not a crash", async () => {
  const server = fakeServer(() => json(200, { results: [] }));
  await assert.rejects(postCaptions([{ url: "https://x/a.png" }], SERVER, { fetch: server.fetch, ...noSleep }), (err) => err.code === "bad_response");
});

// --- CaptionClient ---------------------------------------------------------------------------

const SETTINGS = { serverUrl: "http://127.0.0.1:8000", apiKey: "", allowBytes: false };

test("client: captions in order, one POST per 32 images, cache on the second call", async () => {
  const server = fakeServer(captionAll);
  const client = new CaptionClient({ fetch: server.fetch, ...noSleep });
  const images = Array.from({ length: 70 }, (_, i) => ({ id: `i${i}`, url: `https://example.com/${i}.jpg` }));
  const results = await client.describe(images, SETTINGS);
  assert.equal(results.length, 70);
  const about5 = { caption: "About https://example.com/5.jpg.", alt: "About https://example.com/5.jpg.", alt_from: "caption" };
  assert.deepEqual(results[5], { id: "i5", ...about5, cached: false });
  assert.deepEqual(server.calls.map((c) => c.body.images.length), [32, 32, 6]);
  const again = await client.describe([{ id: "x", url: "https://example.com/5.jpg" }], SETTINGS);
  assert.deepEqual(again, [{ id: "x", ...about5, cached: true }]);
  assert.equal(server.calls.length, 3); // no new request
});

test("the captions' language comes with each caption, from the server's answer and the cache", async () => {
  const answer = (language) => ({ body }) =>
    json(200, {
      model: "tiny",
      ...(language === undefined ? {} : { language }),
      results: body.images.map(() => ({ caption: "Ein Hund.", tokens: 3, cached: false, source: {} })),
    });
  const german = new CaptionClient({ fetch: fakeServer(answer("de")).fetch, ...noSleep });
  const first = await german.describe([{ id: "a", url: "https://example.com/dog.jpg" }], SETTINGS);
  const dog = { caption: "Ein Hund.", alt: "Ein Hund.", alt_from: "caption" };
  assert.deepEqual(first, [{ id: "a", ...dog, cached: false, language: "de" }]);
  const again = await german.describe([{ id: "b", url: "https://example.com/dog.jpg" }], SETTINGS);
  assert.deepEqual(again, [{ id: "b", ...dog, cached: true, language: "de" }]);
  // no language (an older server), or one that is no language tag: none is passed on
  for (const language of [undefined, 'de" onload="x', "", 42, "english!"]) {
    const client = new CaptionClient({ fetch: fakeServer(answer(language)).fetch, ...noSleep });
    const [r] = await client.describe([{ id: "c", url: "https://example.com/dog.jpg" }], SETTINGS);
    assert.deepEqual(r, { id: "c", ...dog, cached: false }, String(language));
  }
});

test("client: the same URL twice is asked once", async () => {
  const server = fakeServer(captionAll);
  const client = new CaptionClient({ fetch: server.fetch, ...noSleep });
  const url = "https://example.com/same.jpg";
  const [a, b] = await Promise.all([
    client.describe([{ id: "a", url }, { id: "b", url }], SETTINGS),
    client.describe([{ id: "c", url }], SETTINGS),
  ]);
  assert.equal(server.calls.length, 1);
  assert.deepEqual(server.calls[0].body.images, [{ url }]);
  assert.equal(a[1].caption, b[0].caption);
});

test("client: another server means another cache entry; incognito has its own", async () => {
  const server = fakeServer(captionAll);
  const client = new CaptionClient({ fetch: server.fetch, ...noSleep });
  const image = [{ id: "a", url: "https://example.com/a.jpg" }];
  await client.describe(image, SETTINGS);
  await client.describe(image, { ...SETTINGS, serverUrl: "http://other:8000" });
  await client.describe(image, SETTINGS, { scope: "incognito" });
  assert.equal(server.calls.length, 3);
});

test("client: without allowBytes, nothing but URLs leaves", async () => {
  const server = fakeServer(captionAll);
  const client = new CaptionClient({ fetch: server.fetch, ...noSleep });
  const results = await client.describe(
    [
      { id: "d", url: "data:image/png;base64,AAAA" },
      { id: "b", url: "blob:https://example.com/1" },
      { id: "c", url: "blob:https://example.com/2", data: "data:image/jpeg;base64,/9j/" },
    ],
    SETTINGS,
  );
  assert.deepEqual(results.map((r) => r.error.code), ["bytes_not_allowed", "bytes_not_allowed", "bytes_not_allowed"]);
  assert.equal(server.calls.length, 0);
});

test("client: with allowBytes, data: is sent as data and blob: asks for a canvas snapshot", async () => {
  const server = fakeServer(captionAll);
  const client = new CaptionClient({ fetch: server.fetch, ...noSleep });
  const settings = { ...SETTINGS, allowBytes: true };
  const results = await client.describe(
    [
      { id: "d", url: "data:image/png;base64,AAAA" },
      { id: "b", url: "blob:https://example.com/1" },
    ],
    settings,
  );
  assert.equal(results[0].caption, "About bytes data:ima.");
  assert.equal(results[1].error.code, "needs_canvas");
  const snap = await client.describe([{ id: "b", url: "blob:https://example.com/1", data: "data:image/jpeg;base64,/9j/" }], settings);
  assert.ok(snap[0].caption);
  assert.deepEqual(server.calls.map((c) => c.body.images), [[{ data: "data:image/png;base64,AAAA" }], [{ data: "data:image/jpeg;base64,/9j/" }]]);
});

test("client: the server cannot fetch an image -> the content script is asked for its bytes (allowBytes)", async () => {
  // The worker downloads no image: with the user's cookies (or just its host access) it could
  // read what the page cannot, and the caption lands in the page. The content script reads
  // the bytes as the page itself may (same-origin or CORS), or the image goes undescribed.
  const server = fakeServer(({ body }) =>
    json(200, {
      results: body.images.map((image) =>
        image.url ? { error: { code: "fetch_failed", message: "the image answered HTTP 403" }, source: {} } : { caption: "A chart.", tokens: 2, cached: false, source: {} },
      ),
    }),
  );
  const client = new CaptionClient({ fetch: server.fetch, ...noSleep });
  const image = [{ id: "a", url: "https://members.example.com/chart.png" }];

  const off = await client.describe(image, SETTINGS);
  assert.equal(off[0].error.code, "fetch_failed");
  assert.equal(server.calls.length, 1);

  const on = { ...SETTINGS, allowBytes: true };
  const asked = await client.describe(image, on);
  assert.equal(asked[0].error.code, "needs_bytes");
  assert.deepEqual(server.calls.map((c) => c.url), Array(2).fill("http://127.0.0.1:8000/v1/captions")); // nothing else
  const sent = await client.describe([{ ...image[0], data: "data:image/png;base64,CQkJ" }], on);
  assert.deepEqual(sent, [{ id: "a", caption: "A chart.", alt: "A chart.", alt_from: "caption", cached: false }]);
  assert.deepEqual(server.calls[2].body.images, [{ data: "data:image/png;base64,CQkJ" }]);
});

test("client: a format the server cannot decode -> a snapshot is asked for, once (allowBytes)", async () => {
  // SVG (and JPEG XL...) render in the browser but are not decoded by the server: with
  // allowBytes the content script is asked for a snapshot (a JPEG, drawn from bytes the page
  // may read); a JPEG's own answer is final, so it can never loop; without allowBytes the
  // server's error stands.
  const server = fakeServer(({ body }) =>
    json(200, {
      results: body.images.map((image) =>
        image.url
          ? { error: { code: image.url.endsWith(".svg") ? "unsupported_image" : "not_an_image", message: "the data is SVG markup" }, source: {} }
          : image.data.startsWith("data:image/jpeg;base64,/9j/")
            ? { caption: "A drawing of a house.", tokens: 5, cached: false, source: {} }
            : { error: { code: "not_an_image", message: "still no raster" }, source: {} },
      ),
    }),
  );
  const client = new CaptionClient({ fetch: server.fetch, ...noSleep });
  const images = [
    { id: "s", url: "https://example.com/house.svg" },
    { id: "x", url: "https://example.com/served-as-png" },
  ];
  const off = await client.describe(images, SETTINGS);
  assert.deepEqual(off.map((r) => r.error.code), ["unsupported_image", "not_an_image"]);

  const on = { ...SETTINGS, allowBytes: true };
  const asked = await client.describe(images, on);
  assert.deepEqual(asked.map((r) => r.error.code), ["needs_canvas", "needs_canvas"]);
  assert.match(asked[0].error.message, /SVG markup; send a snapshot/);
  const svg = await client.describe([{ ...images[0], data: "data:image/svg+xml;base64,PHN2Zz4=" }], on);
  assert.equal(svg[0].error.code, "needs_canvas"); // the bytes themselves: draw them
  const snap = await client.describe([{ ...images[0], data: "data:image/jpeg;base64,/9j/" }], on);
  const house = "A drawing of a house.";
  assert.deepEqual(snap, [{ id: "s", caption: house, alt: house, alt_from: "caption", cached: false }]);
  const bad = await client.describe([{ ...images[1], data: "data:image/jpeg;base64,AAAA" }], on);
  assert.equal(bad[0].error.code, "not_an_image"); // a snapshot the server refuses: final
});

test("client: intranet images with allowBytes: their bytes are asked of the content script, none downloaded", async () => {
  const server = fakeServer(captionAll);
  const client = new CaptionClient({ fetch: server.fetch, ...noSleep });
  const results = await client.describe([{ id: "a", url: "http://wiki.corp/logo.png" }], { ...SETTINGS, allowBytes: true });
  assert.equal(results[0].error.code, "needs_bytes");
  assert.equal(server.calls.length, 0); // neither the image nor the server
});

test("client: captions are kept per page (top-level page and frame): another site asks again", async () => {
  // A caption made for one site (from bytes only that site could read, say) must not reach
  // another that asks for the same address; and which images another site showed is none of
  // a page's business either.
  const server = fakeServer(captionAll);
  const client = new CaptionClient({ fetch: server.fetch, ...noSleep });
  const image = [{ id: "a", url: "https://cdn.example/photo.jpg" }];
  const victim = { partition: "https://victim.example https://victim.example" };
  const hostile = { partition: "https://hostile.example https://hostile.example" };
  assert.equal((await client.describe(image, SETTINGS, victim))[0].cached, false);
  assert.equal((await client.describe(image, SETTINGS, victim))[0].cached, true);
  assert.equal((await client.describe(image, SETTINGS, hostile))[0].cached, false);
  assert.equal(server.calls.length, 2);
  // ...in flight too: two sites asking at once are two requests.
  const url = "https://cdn.example/other.jpg";
  await Promise.all([
    client.describe([{ id: "b", url }], SETTINGS, victim),
    client.describe([{ id: "c", url }], SETTINGS, hostile),
  ]);
  assert.equal(server.calls.length, 4);
});

test("client: a caption made from bytes is not used once sending bytes is off", async () => {
  const server = fakeServer(captionAll);
  const client = new CaptionClient({ fetch: server.fetch, ...noSleep });
  const url = "https://members.example/chart.png";
  const on = { ...SETTINGS, allowBytes: true };
  const fromBytes = await client.describe([{ id: "a", url, data: "data:image/png;base64,CQkJ" }], on);
  assert.equal(fromBytes[0].caption, "About bytes data:ima.");
  assert.equal((await client.describe([{ id: "b", url }], on))[0].caption, "About bytes data:ima."); // cached
  // Off: the server is asked for the address, and the bytes' caption is forgotten.
  const off = await client.describe([{ id: "c", url }], SETTINGS);
  assert.deepEqual(off, [{ id: "c", caption: `About ${url}.`, alt: `About ${url}.`, alt_from: "caption", cached: false }]);
  assert.equal(server.calls.length, 2);
  assert.equal([...client.cache.values()].some((entry) => entry.fromBytes), false);
});

test("client: server down -> failures, then a pause without requests, then back", async () => {
  let now = 1_000_000;
  let up = false;
  let tries = 0;
  const fetch = async (url, init) => {
    tries++;
    if (!up) throw new TypeError("Failed to fetch");
    return captionAll({ body: JSON.parse(init.body) });
  };
  const client = new CaptionClient({ fetch, now: () => now, ...noSleep });
  const first = await client.describe([{ id: "a", url: "https://x/1.png" }], SETTINGS);
  assert.equal(first[0].error.code, "server_unreachable");
  assert.equal(tries, MAX_RETRIES + 1);

  const paused = await client.describe([{ id: "b", url: "https://x/2.png" }], SETTINGS);
  assert.equal(paused[0].error.code, "server_unreachable");
  assert.equal(tries, MAX_RETRIES + 1); // not even tried

  now += 16_000;
  up = true;
  const back = await client.describe([{ id: "c", url: "https://x/1.png" }], SETTINGS);
  assert.ok(back[0].caption); // failures were not cached
});

test("client: unsupported URLs fail alone", async () => {
  const server = fakeServer(captionAll);
  const client = new CaptionClient({ fetch: server.fetch, ...noSleep });
  const results = await client.describe([{ id: "a", url: "ftp://x/a.png" }, { id: "b", url: "https://x/b.png" }], SETTINGS);
  assert.equal(results[0].error.code, "unsupported_url");
  assert.ok(results[1].caption);
});

test("languageName: the server's language tag in words, anything else nothing", () => {
  assert.equal(languageName("en"), "English (en)");
  assert.equal(languageName("pt-BR"), "Brazilian Portuguese (pt-BR)");
  for (const bad of [undefined, "", "English", 'en"><b>', 7]) assert.equal(languageName(bad), "");
});

test("readResult: the caption's confidence, whether it is confident, and the check of an author's alt", () => {
  // issue 23: passed on as the server sends them, when they have the documented types.
  const r = readResult({
    caption: "A red circle.",
    alt: "A red circle.",
    alt_from: "caption",
    confidence: 0.31,
    confident: false,
    alt_check: { score: -0.42, verdict: "suspect", extra: "dropped" },
  });
  assert.deepEqual(r, {
    caption: "A red circle.",
    alt: "A red circle.",
    alt_from: "caption",
    confidence: 0.31,
    confident: false,
    alt_check: { score: -0.42, verdict: "suspect" },
    cached: false,
  });
  assert.deepEqual(readResult({ caption: "A", alt_check: { score: 1.2, verdict: "matches" } }).alt_check, { score: 1.2, verdict: "matches" });
  // A server that is not AltCap, or a model without a text tower: none of them.
  const plain = readResult({ caption: "A cat." });
  for (const key of ["confidence", "confident", "alt_check"]) assert.equal(key in plain, false, key);
  // Odd values are dropped, never guessed at.
  for (const odd of [
    { confidence: 1.5, confident: "false", alt_check: { score: "1", verdict: "matches" } },
    { confidence: "0.2", confident: 0, alt_check: { score: 0.3, verdict: "maybe" } },
    { confidence: null, confident: null, alt_check: "suspect" },
    { confidence: NaN, alt_check: { score: NaN, verdict: "suspect" } },
  ]) {
    const read = readResult({ caption: "A cat.", ...odd });
    for (const key of ["confidence", "confident", "alt_check"]) assert.equal(key in read, false, `${key} ${JSON.stringify(odd)}`);
  }
});

test("client: an author's alt goes with its image only with checkAlt on, cached apart from the caption", async () => {
  const server = fakeServer(({ body }) =>
    json(200, {
      results: body.images.map((image) => ({
        caption: "A red circle.",
        alt: "A red circle.",
        alt_from: "caption",
        confidence: 0.9,
        confident: true,
        ...(image.alt ? { alt_check: { score: image.alt.includes("star") ? -0.5 : 0.9, verdict: image.alt.includes("star") ? "suspect" : "matches" } } : {}),
      })),
    }),
  );
  const client = new CaptionClient({ fetch: server.fetch, ...noSleep });
  const url = "https://example.com/shape.png";
  const star = "A blue star.";
  // Off: refused before anything is sent.
  const [off] = await client.describe([{ id: "a", url, alt: star }], SETTINGS);
  assert.equal(off.error.code, "alt_check_off");
  assert.equal(server.calls.length, 0);

  const on = { ...SETTINGS, checkAlt: true };
  const [a, b, c] = await client.describe([{ id: "a", url, alt: star }, { id: "b", url, alt: "A red circle." }, { id: "c", url }], on);
  assert.deepEqual(server.calls[0].body, { images: [{ url, alt: star }, { url, alt: "A red circle." }, { url }] }); // one request
  assert.deepEqual([a.alt_check.verdict, b.alt_check.verdict, "alt_check" in c], ["suspect", "matches", false]);
  assert.equal(a.confident, true);
  // Each kept apart: the same image with the same alt comes from the cache, with its check.
  const [again] = await client.describe([{ id: "d", url, alt: star }], on);
  assert.deepEqual([again.cached, again.alt_check.verdict, server.calls.length], [true, "suspect", 1]);
  const [plain] = await client.describe([{ id: "e", url }], on);
  assert.deepEqual([plain.cached, "alt_check" in plain], [true, false]);
  // A very long alt is cut before it leaves.
  await client.describe([{ id: "f", url, alt: "x".repeat(5000) }], on);
  assert.equal(server.calls.at(-1).body.images[0].alt.length, 1000);
});

test("client: an image with an author's alt follows the bytes rules of any image", async () => {
  const server = fakeServer(captionAll);
  const client = new CaptionClient({ fetch: server.fetch, ...noSleep });
  const alt = "The team in Lisbon";
  // Without allowBytes nothing but its address (and alt) leaves; a data: URL not at all.
  const [data] = await client.describe([{ id: "a", url: "data:image/png;base64,AAAA", alt }], { ...SETTINGS, checkAlt: true });
  assert.equal(data.error.code, "bytes_not_allowed");
  // With allowBytes, an intranet image's bytes are asked of the content script, as for a caption.
  const bytes = { ...SETTINGS, checkAlt: true, allowBytes: true };
  const [intranet] = await client.describe([{ id: "b", url: "http://intranet/team.jpg", alt }], bytes);
  assert.equal(intranet.error.code, "needs_bytes");
  assert.equal(server.calls.length, 0);
  await client.describe([{ id: "b", url: "http://intranet/team.jpg", data: "data:image/png;base64,AAAA", alt }], bytes);
  assert.deepEqual(server.calls[0].body, { images: [{ data: "data:image/png;base64,AAAA", alt }] });
});
