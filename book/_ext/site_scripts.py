"""Two fixes to the scripts of every page, checked by tests/test_site.py in a real browser.

* Sphinx 7.4 emits an inline script twice when an extension adds it after the builder started
  (``None`` and ``''`` file names compare unequal); sphinx-thebe's ``const THEBE_JS_URL = ...``
  then throws "Identifier 'THEBE_JS_URL' has already been declared" on every page. Keep each once.
* With no default colour mode, pydata-sphinx-theme logs "Got invalid theme mode" on a reader's
  first visit. Default to ``auto`` (follow the reader's system setting); the theme reads it from
  the page context, as ``html_context``'s ``default_mode``.
"""

from __future__ import annotations

from typing import Any


def _fix_page(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    context["default_mode"] = context.get("default_mode") or "auto"
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        attributes = getattr(script, "attributes", {})
        name = script.filename if hasattr(script, "filename") else str(script)
        key = (name or "", tuple(sorted(attributes.items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    scripts[:] = kept


def setup(app: Any) -> dict[str, Any]:
    # early: `html-page-context` stops at the first handler that returns a template name
    app.connect("html-page-context", _fix_page, priority=10)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
