"""`rekey demo --browser`: step 4 of the demo done by a person in a browser instead of over the API.

Headless Chromium (Debian's `/usr/bin/chromium`, or `REKEY_CHROMIUM`) driven by Playwright, with
Chrome's virtual authenticator standing in for the user's new security key: the user opens the
tenant's sign-in page, signs in with the password, is sent to enrolment, registers the key,
makes backup codes (shown once, never printed), signs out, and signs in again with the key. Each
step is printed, and each page saved as a screenshot in the folder given. Playwright is an
optional extra (`pip install -e '.[browser]'`), never a runtime dependency.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.demo import Story

CHROMIUM = Path(os.environ.get("REKEY_CHROMIUM", "/usr/bin/chromium"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _launch() -> tuple[Any, Any]:
    from app.demo import DemoFailed

    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise DemoFailed("--browser needs Playwright: pip install -e '.[browser]' (or `make browser`)") from exc
    if not CHROMIUM.exists():
        raise DemoFailed(f"--browser needs Chromium at {CHROMIUM}: apt-get install -y chromium (or `make browser`), "
                         "or set REKEY_CHROMIUM")
    playwright = sync_playwright().start()
    return playwright, playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)


def page_base(url: str) -> str:
    """The service's URL as a person opens it: a loopback address becomes `localhost`, the host
    name WebAuthn needs (a relying party cannot be an IP address; `rekey run` serves both)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.hostname in ("127.0.0.1", "::1", "0.0.0.0"):  # noqa: S104
        netloc = "localhost" + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", "")).rstrip("/")
    return url.rstrip("/")


class BrowserStep:
    """The user's side of step 4 in a real browser; `run(story)` raises DemoFailed on a miss."""

    def __init__(self, screenshots: Path, timeout: float):
        self.folder = screenshots
        self.timeout_ms = int(timeout * 1000)
        self.count = 0

    def shoot(self, story: Story, page: Any, name: str) -> None:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        story.say(f"    screenshot {path}")

    def run(self, story: Story) -> None:
        from app.demo import DemoFailed

        c = story.c
        self.folder.mkdir(parents=True, exist_ok=True)
        story.heading("Step 4 - The user signs in and enrols a security key, in a browser (headless Chromium)")
        playwright, chromium = _launch()
        try:
            context = chromium.new_context(base_url=page_base(story.service.url),
                                           viewport={"width": 1000, "height": 800})
            context.set_default_timeout(self.timeout_ms)
            page = context.new_page()
            self._walk(story, page, c)
        except DemoFailed:
            raise
        except Exception as exc:  # a page that did not show what the user expects
            raise DemoFailed(f"in the browser: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
        finally:
            chromium.close()
            playwright.stop()

    def _password(self, page: Any, c: Any) -> None:
        page.get_by_label("Email address").fill(c.email)
        page.get_by_label("Password").fill(c.password)
        page.get_by_role("button", name="Continue").click()

    def _walk(self, story: Story, page: Any, c: Any) -> None:
        from app.demo import DemoFailed

        cdp = page.context.new_cdp_session(page)
        cdp.send("WebAuthn.enable")
        cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
            "protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
            "isUserVerified": True, "automaticPresenceSimulation": True}})
        story.say("  a virtual security key is plugged in (Chrome's virtual authenticator: ctap2, user verification)")
        signin = f"/t/{c.slug}/signin"
        page.goto(signin)
        page.get_by_role("heading", level=1, name="Sign in").wait_for()
        story.say(f"  opens {page_base(story.service.url)}{signin}, the page the reset notice names")
        self.shoot(story, page, "signin")
        self._password(page, c)
        page.get_by_role("heading", level=1, name="Set up a sign-in factor").wait_for()
        story.say(f"  email + password -> {page.url} (a session that may only enrol a factor or change the password)")
        self.shoot(story, page, "enrol")
        page.get_by_role("link", name="Set up a security key").click()
        page.get_by_label("Name of this key").fill("Alex's new key")
        self.shoot(story, page, "enrol-key")
        page.get_by_role("button", name="Register my security key").click()
        page.get_by_role("heading", level=1, name="Your new factor is set up").wait_for()
        story.say("  registers the key \"Alex's new key\" (the browser's WebAuthn prompt, answered by the key)")
        self.shoot(story, page, "enrol-done")
        detail = story.case()
        if "recovery.recovered" not in [t["action"] for t in detail["timeline"]]:
            raise DemoFailed(f"the key enrolment did not close the loop: the case is {detail['state']}")
        story.say(f"  the enrolment is linked to the case (recovery.recovered); case: {detail['state']}")
        page.get_by_role("button", name="Make my backup codes").click()
        page.get_by_role("heading", level=1, name="Your backup codes").wait_for()
        codes = page.locator(".codes code").count()
        story.say(f"  makes {codes} backup codes, shown once on the page (not printed)")
        page.get_by_role("button", name="I saved them: sign out and sign in again").click()
        page.get_by_text("You are signed out.").wait_for()
        story.say("  signs out")
        self._password(page, c)
        page.get_by_role("heading", level=1, name="Confirm it is you").wait_for()
        self.shoot(story, page, "signin-second-factor")
        page.get_by_role("button", name="Use my security key").click()
        page.get_by_role("heading", level=1, name="Account security").wait_for()
        story.say("  signs in again with email, password and the security key -> the account security page")
        self.shoot(story, page, "account")
        story.done("step4_enrol", signin="enrolment_required", factor="webauthn", backup_codes=codes,
                   state=detail["state"], screenshots=str(self.folder))
