"""The operator dashboard: server-rendered HTML with inline SVG charts (no CDN, no build step, no
script), signed in with an API key, tenant-scoped."""
