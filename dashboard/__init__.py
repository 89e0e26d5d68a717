"""`ft dashboard`: a read-mostly web view of the team's catalog (pool, queue, jobs, adapters, datasets).

    ft dashboard                      # http://127.0.0.1:8765, this machine only
    FT_DASHBOARD_TOKEN=... ft dashboard --host 0.0.0.0

Why this stack: Starlette + Jinja2 (autoescaping) + uvicorn, with htmx (vendored, 52 KB) for the live
parts. Every page is rendered on the server from the same catalog functions the CLI calls, so the
dashboard cannot drift from `ft jobs list` or `ft workers list`; there is no build step, no JavaScript
of ours beyond htmx attributes, and nothing is fetched from the internet. Gradio would bring its own
front-end bundle and state model for what is here a handful of tables; FastAPI's schema machinery has
nothing to describe when the responses are HTML. Jinja2 was already a dependency (templates).

Modules: `app` (routes, auth, serving), `views` (catalog rows -> what a page shows), `svg` (the loss
curves as inline SVG), `download` (an adapter's files as a zip, streamed), `formats` (sizes, times).
It sits between `worker` and `cli`: it imports catalog and worker, and only `cli.dashboard` imports it.
"""
