"""Crawl: fetching (SSRF-safe), politeness, pages, sitemaps, patching HTML."""
