"""One redaction policy for everything that is sent: the only home of the secret rules.

An exception message often quotes what failed: a database URL with its password, a request
with its ``Authorization`` header; a log record's ``extra``, a bound property or a source
line can hold a token. Every text the library sends goes through one :class:`Redactor`
on the worker thread (so it costs the app nothing): exception values, log messages,
fingerprints, source lines, code variables (see ``_code_variables``), Sentry-derived data
and every user-supplied property at any depth. What matches is replaced by ``[Filtered]``.

**Keys.** A property or dict key, or the name in a ``name=value`` / ``name: value`` /
``'name': 'value'`` / ``"name": "value"`` assignment inside text, is secret when its
letters and digits (``DB_PASSWORD`` -> ``dbpassword``) contain one of the key words:
password, passwd, passphrase, pwd, secret, token (not ``tokens``, ``tokenizer``,
``token_count``), api key, access key, private key, signing/encryption/account key, auth
(not ``author``, ``authority``, ``authenticated``), cookie, session (not ``session_id``:
PostHog's own field), credential, dsn, jwt, bearer, connection string, csrf/xsrf. The
whole value under a secret key is filtered, whatever its type (``None`` and booleans
stay). Users add key words (``redact_keys``).

**Values.** Known token formats (AWS, GitHub, GitLab, Stripe, Slack, Google, OpenAI,
Anthropic, Databricks, Shopify, New Relic, Mailchimp, SendGrid, npm, PyPI, Hugging Face,
Sentry, PostHog personal keys, JWTs, PEM private key blocks, ...), URL credentials
(``scheme://user:[Filtered]@host``), Sentry DSN keys, ``Bearer``/``Basic``/``Token``
values, and a cautious high-entropy rule (a run of 32+ letters and digits with upper
case, lower case and digits, and near-random character frequencies: git SHAs, UUIDs and
identifiers stay readable). Users add regexes (``redact_patterns``): each match is
filtered, or only its ``value`` group when the pattern has one.

**Redact first, then cut.** A text is cut to twice its final limit (a slice: a 50 MB
value costs what a short one does), redacted, then cut to the limit, so a secret that
straddles the final cut is filtered whole. Whenever a text ends cut (here or on the
caller's thread), a partial secret at its end (a token prefix, ``user:pass`` without its
``@``, a ``Bearer`` value, a high-entropy run) is filtered too. Every rule is a regex
without nested unbounded repetition, behind a substring pre-check, so scanning is linear
in the (bounded) text.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "DEFAULT_REDACTOR",
    "FILTERED",
    "Redactor",
    "compile_patterns",
    "key_words",
    "redact",
]

FILTERED = "[Filtered]"

# -- keys ---------------------------------------------------------------------------------

# On a key's lower-case letters and digits (``X-Api-Key`` -> ``xapikey``).
_KEY_RULE = (
    r"pass(?:word|wd|phrase)|pwd|secret|token(?!s|iz|count)|apikey|accesskey|privatekey"
    r"|signingkey|encryptionkey|accountkey|auth(?!or(?!iz)|entica)|cookie|session(?!id$)"
    r"|credential|dsn|jwt|bearer|conn(?:ection)?str|csrf|xsrf"
)
# The same words as they are written in text (``api_key``, ``API-KEY``, ``apiKey``); the
# whole name around the word is then checked with ``_KEY_RULE``.
_TEXT_KEY_WORDS = (
    r"pass(?:word|wd|phrase)|pwd|secret|token|api[_.-]?key|access[_.-]?key"
    r"|private[_.-]?key|signing[_.-]?key|encryption[_.-]?key|account[_.-]?key|auth"
    r"|cookie|session|credential|dsn|jwt|bearer|conn(?:ection)?[_.-]?str|csrf|xsrf"
)
# Cheap pre-check for the assignment rule, on the lower-cased text.
_KEY_HINTS = (
    "pass", "pwd", "secret", "token", "key", "auth", "cookie", "session", "credential",
    "dsn", "jwt", "bearer", "conn", "csrf", "xsrf",
)  # fmt: skip
_NOT_KEY_CHARS = re.compile(r"[^a-z0-9]+")
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-$")
_KEY_CACHE_LIMIT = 4096

# name = value, name: value, 'name': 'value', "name": "value", name => value. The value is
# quoted (to its closing quote, or the end of the line: a cut one), bracketed, or runs to a
# separator; an auth scheme word before it (``Authorization: Bearer x``) is kept and the
# rest filtered. Matched on the lower-cased text, without IGNORECASE, so that the engine
# skips to the key words' first letters.
_ASSIGNMENT = (
    r"(?P<word>{words})(?P<tail>[a-z0-9_.\-]{{0,64}})(?P<close>\\?['\"]?)"
    r"[ \t]{{0,16}}(?:=>|:=|[=:])[ \t]{{0,16}}"
    r"(?:(?:bearer|basic|digest|token)[ \t]+)?"
    r"(?P<value>(?P<q>\\?['\"])(?:(?!(?P=q)).)*(?:(?P=q)|$)|\[filtered\]"
    r"|\([^)\n]*\)?|\[[^\]\n]*\]?|\{{[^}}\n]*\}}?|[^\s,;&'\"}}\])<>\\]+)"
)

# -- values -------------------------------------------------------------------------------

_B = r"(?<![A-Za-z0-9_])"  # a token starts at a boundary
# Known token formats: each is distinctive enough to be filtered wherever it appears. Each
# starts with a literal character and has no look-behind, so that the regex engine skips
# to candidate characters (a 16 KiB text costs ~1 ms, not ~12); a match must start at a
# word boundary, checked in ``_filtered_token``.
_TOKEN_FORMATS = [
    r"AKIA[0-9A-Z]{16}(?![0-9A-Z])",  # AWS access key ids
    r"ASIA[0-9A-Z]{16}(?![0-9A-Z])",
    r"ABIA[0-9A-Z]{16}(?![0-9A-Z])",
    r"ACCA[0-9A-Z]{16}(?![0-9A-Z])",
    r"sk_(?:live|test)_[0-9A-Za-z]{10,}",  # Stripe secret keys
    r"rk_(?:live|test)_[0-9A-Za-z]{10,}",  # Stripe restricted keys
    r"whsec_[0-9A-Za-z]{10,}",  # Stripe webhook secret
    r"eyJ[0-9A-Za-z_-]{5,}\.eyJ[0-9A-Za-z_-]{5,}\.[0-9A-Za-z_-]*",  # JWT
    r"gh[pousr]_[0-9A-Za-z]{20,}",  # GitHub tokens
    r"github_pat_[0-9A-Za-z_]{20,}",
    r"xox[abposre]-[0-9A-Za-z-]{10,}",  # Slack
    r"AIza[0-9A-Za-z_-]{35}",  # Google API key
    r"ya29\.[0-9A-Za-z_-]{20,}",  # Google OAuth access token
    r"GOCSPX-[0-9A-Za-z_-]{20,}",  # Google OAuth client secret
    r"gl(?:pat|dt|ptt|rt|soat|cbt)-[0-9A-Za-z_-]{20,}",  # GitLab
    r"npm_[0-9A-Za-z]{36}",  # npm
    r"pypi-AgE[0-9A-Za-z_-]{50,}",  # PyPI
    r"SG\.[0-9A-Za-z_-]{16,}\.[0-9A-Za-z_-]{16,}",  # SendGrid
    r"phx_[0-9A-Za-z]{20,}",  # PostHog personal API key (phc_ project keys are public)
    r"sk-(?:proj-|ant-[a-z0-9]{2,8}-|svcacct-|admin-)?[0-9A-Za-z_-]{20,}",  # OpenAI, Anthropic
    r"dapi[0-9a-f]{32}(?:-\d+)?",  # Databricks
    r"shp(?:at|ss|ca|pa)_[0-9a-fA-F]{32}",  # Shopify
    r"NRAK-[0-9A-Z]{27}",  # New Relic user API key
    r"NRII-[0-9A-Za-z_-]{32}",  # New Relic insert key
    r"hf_[A-Za-z]{30,}",  # Hugging Face
    r"sntry[su]_[0-9A-Za-z+/=_-]{20,}",  # Sentry auth tokens
    r"dop_v1_[0-9a-f]{64}",  # DigitalOcean
    r"lin_api_[0-9A-Za-z]{40}",  # Linear
    r"PMAK-[0-9a-f]{24}-[0-9a-f]{34}",  # Postman
    r"xkeysib-[0-9a-f]{64}-[0-9A-Za-z]{16}",  # Brevo / Sendinblue
    r"glsa_[0-9A-Za-z]{32}_[0-9a-f]{8}",  # Grafana service account
    r"sq0(?:atp|csp)-[0-9A-Za-z_-]{22,}",  # Square
    r"ATATT3[0-9A-Za-z_=-]{50,}",  # Atlassian API token
    r"dp\.(?:pt|st|sa|ct|scrt)\.[0-9A-Za-z]{40,}",  # Doppler
    r"pul-[0-9a-f]{40}",  # Pulumi
    r"AGE-SECRET-KEY-1[0-9A-Z]{58}",  # age
]
_TOKEN_FORMAT = re.compile("|".join(_TOKEN_FORMATS))
# Formats that start with a digit or hex run, each behind its own substring check.
_HEX_FORMATS = (
    ("-us", re.compile(_B + r"[0-9a-f]{32}-us\d{1,2}(?![0-9A-Za-z])")),  # Mailchimp
    (":AA", re.compile(_B + r"\d{8,10}:AA[0-9A-Za-z_-]{33}")),  # Telegram bot token
)
# The same formats' prefixes: at the end of a cut text, a prefix and anything after it.
_TOKEN_PREFIX_AT_END = re.compile(
    _B + r"(?:AKIA|ASIA|ABIA|ACCA|sk_live_|sk_test_|rk_live_|rk_test_|whsec_|eyJ|gh[pousr]_"
    r"|github_pat_|xox[abposre]-|AIza|ya29\.|GOCSPX-|gl(?:pat|dt|ptt|rt|soat|cbt)-|npm_"
    r"|pypi-|SG\.|phx_|sk-|dapi|shp(?:at|ss|ca|pa)_|NRAK-|NRII-|hf_|sntry[su]_|dop_v1_"
    r"|lin_api_|PMAK-|xkeysib-|glsa_|sq0atp-|sq0csp-|ATATT|dp\.|pul-|AGE-SECRET-KEY-)"
    r"[0-9A-Za-z_+/=.:-]*\Z"
)

# -----BEGIN ... PRIVATE KEY----- through its END line, or to the end of a cut text.
_PEM = re.compile(
    r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----.*?"
    r"(?:-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|\Z)",
    re.DOTALL,
)
# scheme://user:password@host -> scheme://user:[Filtered]@host (the last @ before the path)
_URL_CREDENTIALS = re.compile(
    r"(?P<head>(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{0,30}://[^:@/\s]{0,256}):"
    r"[^/\s]{0,256}@"
)
_URL_CREDENTIALS_AT_END = re.compile(
    r"(?P<head>(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{0,30}://[^:@/\s]{0,256}):"
    r"[^@/\s]*\Z"
)
# https://<32 hex>[:<32 hex>]@host/1: a Sentry DSN's key.
_SENTRY_DSN = re.compile(r"(?P<head>\bhttps?://)[0-9a-f]{32}(?::[0-9a-f]{32})?@")
# Authorization: Bearer abc..., "Basic dXNlcjpw...", token 3f9a... (a value with a digit,
# a symbol or mixed case: "token expired", "basic authentication" stay)
_AUTH_SCHEME = re.compile(
    r"(?P<head>\b(?:bearer|basic|digest|token)[ \t]+)(?P<value>[A-Za-z0-9\-._~+/]{8,}=*)",
    re.IGNORECASE,
)
_AUTH_SCHEME_AT_END = re.compile(r"(?P<head>\b(?:bearer|basic|digest)[ \t]+)\S*\Z", re.I)
# High-entropy runs in text (see _high_entropy): 32+ characters.
_RUN = re.compile(r"(?<![A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{32,}={0,2}")
_RUN_AT_END = re.compile(r"(?<![A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{16,}={0,2}\Z")
# How much of a cut text's end is checked for a partial secret.
_TAIL = 600
_CUT_MARK = "..."
# Bounds of the walk over user properties: beyond them a value is filtered, never sent
# unread.
_MAX_ITEMS = 100
_MAX_DEPTH = 8
_MAX_NODES = 5000
_MAX_REPR = 4096


def key_words(value: Iterable[str] | str | None) -> tuple[str, ...]:
    """User key words (``redact_keys``), checked: non-empty strings with a letter or digit."""
    if value is None:
        return ()
    items: list[Any] = [value] if isinstance(value, str) else list(value)
    for item in items:
        if not isinstance(item, str) or not _NOT_KEY_CHARS.sub("", item.lower()):
            raise ValueError(
                "redact_keys takes key names such as 'ssn' or 'iban' (matched anywhere in a "
                f"key, ignoring case, '_' and '-'), got {item!r}"
            )
    return tuple(items)


def compile_patterns(
    value: Iterable[str | re.Pattern[str]] | str | None,
) -> tuple[re.Pattern[str], ...]:
    """User regexes (``redact_patterns``), compiled and checked now, not on the worker."""
    if value is None:
        return ()
    items: list[Any] = [value] if isinstance(value, (str, re.Pattern)) else list(value)
    compiled: list[re.Pattern[str]] = []
    for item in items:
        if isinstance(item, re.Pattern):
            pattern = item
        elif isinstance(item, str):
            try:
                pattern = re.compile(item)
            except re.error as error:
                raise ValueError(
                    f"redact_patterns: {item!r} is not a valid regex: {error}"
                ) from None
        else:
            raise TypeError(f"redact_patterns takes regexes (str or re.Pattern), got {item!r}")
        if not isinstance(pattern.pattern, str):
            raise TypeError(f"redact_patterns takes str regexes, not bytes: {item!r}")
        if pattern.search("") is not None:
            raise ValueError(
                f"redact_patterns: {pattern.pattern!r} matches the empty string, so it would "
                "filter nothing useful and everything in between; make it match a secret"
            )
        compiled.append(pattern)
    return tuple(compiled)


class Redactor:
    """The policy: the built-in rules plus a user's ``redact_keys`` and ``redact_patterns``.

    Built once per set of options (see ``PayloadOptions.redactor``); thread-safe.
    """

    def __init__(self, keys: Iterable[str] = (), patterns: Iterable[re.Pattern[str]] = ()) -> None:
        self.keys = key_words(tuple(keys))
        self.patterns = tuple(patterns)
        extra = [_NOT_KEY_CHARS.sub("", key.lower()) for key in self.keys]
        self._key_rule = re.compile("|".join([_KEY_RULE, *map(re.escape, extra)]))
        written = [
            r"[_.\- ]?".join(re.escape(part) for part in re.split(r"[^A-Za-z0-9]+", key) if part)
            for key in self.keys
        ]
        self._assignment = re.compile(
            _ASSIGNMENT.format(words="|".join([_TEXT_KEY_WORDS, *written]).lower()),
            re.MULTILINE,
        )
        self._hints = _KEY_HINTS + tuple(
            part.lower()
            for key in self.keys
            for part in re.split(r"[^A-Za-z0-9]+", key)[:1]
            if part
        )
        self._key_cache: dict[str, bool] = {}

    # -- keys --------------------------------------------------------------------------

    def is_secret_key(self, key: str) -> bool:
        """Whether the value under ``key`` (a property, dict key or variable name) is
        filtered whole."""
        cached = self._key_cache.get(key)
        if cached is None:
            normal = _NOT_KEY_CHARS.sub("", key[:256].lower())
            cached = bool(normal) and self._key_rule.search(normal) is not None
            if len(self._key_cache) >= _KEY_CACHE_LIMIT:
                self._key_cache.clear()
            self._key_cache[key] = cached
        return cached

    # -- text --------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        """``text`` with every secret filtered (no cut: for bounded text only)."""
        if "PRIVATE KEY" in text:
            text = _PEM.sub(FILTERED, text)
        if "://" in text:
            text = _SENTRY_DSN.sub(rf"\g<head>{FILTERED}@", text)
            if "@" in text:
                text = _URL_CREDENTIALS.sub(rf"\g<head>:{FILTERED}@", text)
        lower = text.lower()
        if "bearer" in lower or "basic" in lower or "token" in lower or "digest" in lower:
            text = _AUTH_SCHEME.sub(_filtered_auth, text)
        if any(hint in lower for hint in self._hints):
            text = self._filter_assignments(text, lower)
        text = _TOKEN_FORMAT.sub(_filtered_token, text)
        for hint, rule in _HEX_FORMATS:
            if hint in text:
                text = rule.sub(FILTERED, text)
        for pattern in self.patterns:
            text = pattern.sub(_filtered_pattern, text)
        return _RUN.sub(_filtered_run, text) if len(text) >= 32 else text

    def text(self, value: str, limit: int) -> str:
        """Redact first, then cut: ``value`` cut to ``2 * limit``, redacted, cut to
        ``limit`` (marked ``...``); a partial secret at the end of a cut text is filtered."""
        if type(value) is not str:
            value = str.__str__(value)
        cut = len(value) > 2 * limit
        if cut:
            value = value[: 2 * limit]
        value = self.redact(value)
        if cut or len(value) > limit:
            value = value[: limit - len(_CUT_MARK)] + _CUT_MARK
        if value.endswith(_CUT_MARK):  # cut here, or on the caller's thread
            # (a partial secret replaced by the longer mark may need cutting again)
            kept = self.guard_end(value[: -len(_CUT_MARK)])
            value = kept[: max(limit, len(value)) - len(_CUT_MARK)] + _CUT_MARK
        return value

    def guard_end(self, text: str) -> str:
        """``text`` (which was cut at its end) with a partial secret at its end filtered."""
        head, tail = text[:-_TAIL], text[-_TAIL:]
        tail = _TOKEN_PREFIX_AT_END.sub(FILTERED, tail)
        if "://" in tail:
            tail = _URL_CREDENTIALS_AT_END.sub(rf"\g<head>:{FILTERED}", tail)
        tail = _AUTH_SCHEME_AT_END.sub(rf"\g<head>{FILTERED}", tail)
        match = _RUN_AT_END.search(tail)
        if match is not None and _high_entropy(match.group(), 16):
            tail = tail[: match.start()] + FILTERED
        return head + tail

    def has_credential(self, text: str) -> bool:
        """Whether ``text`` holds a credential by its value alone: a token format, a PEM
        key, URL credentials or a user pattern (names and assignments aside)."""
        if any(_at_boundary(match) for match in _TOKEN_FORMAT.finditer(text)):
            return True
        if "PRIVATE KEY" in text and _PEM.search(text):
            return True
        if any(hint in text and rule.search(text) for hint, rule in _HEX_FORMATS):
            return True
        if "://" in text and (_URL_CREDENTIALS.search(text) or _SENTRY_DSN.search(text)):
            return True
        return any(pattern.search(text) for pattern in self.patterns)

    def fingerprint(self, text: str) -> str:
        """A fingerprint, redacted; a long template's ``head...digest`` keeps its digest."""
        if len(text) > 20 and text[-19:-16] == _CUT_MARK and _is_hex(text[-16:]):
            head = self.guard_end(self.redact(text[:-19]))
            return f"{head}{_CUT_MARK}{text[-16:]}"
        return self.redact(text)

    # -- structures --------------------------------------------------------------------

    def properties(self, value: Mapping[str, Any], text_limit: int) -> dict[str, Any]:
        """A redacted copy of user properties: keys checked, every text redacted, at any
        depth (dicts, lists, tuples, sets), and any other object by its (redacted) repr."""
        walk = _Walk(self, text_limit)
        result = walk.value(value, 0)
        return result if isinstance(result, dict) else {}

    def exception_list(
        self, entries: list[dict[str, Any]], value_limit: int, line_limit: int
    ) -> list[dict[str, Any]]:
        """A redacted copy of a ``$exception_list`` built elsewhere (from a Sentry event):
        values and source lines."""
        result: list[dict[str, Any]] = []
        for entry in entries:
            if not isinstance(entry, dict):
                result.append(entry)
                continue
            entry = dict(entry)
            if isinstance(entry.get("value"), str):
                entry["value"] = self.text(entry["value"], value_limit)
            stacktrace = entry.get("stacktrace")
            if isinstance(stacktrace, dict) and isinstance(stacktrace.get("frames"), list):
                frames = [
                    self._frame(frame, line_limit) if isinstance(frame, dict) else frame
                    for frame in stacktrace["frames"]
                ]
                entry["stacktrace"] = {**stacktrace, "frames": frames}
            result.append(entry)
        return result

    def _frame(self, frame: dict[str, Any], limit: int) -> dict[str, Any]:
        frame = dict(frame)
        if isinstance(frame.get("context_line"), str):
            frame["context_line"] = self.text(frame["context_line"], limit)
        for key in ("pre_context", "post_context"):
            lines = frame.get(key)
            if isinstance(lines, list):
                frame[key] = [self.text(s, limit) if isinstance(s, str) else s for s in lines]
        if "code_variables" in frame:
            frame["code_variables"] = _Walk(self, limit).value(frame["code_variables"], 0)
        return frame

    # -- replacements ------------------------------------------------------------------

    def _filter_assignments(self, text: str, lower: str) -> str:
        if len(lower) != len(text):  # lower() changed the length (rare letters): per char
            lower = "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
        parts: list[str] = []
        position = 0
        for match in self._assignment.finditer(lower):
            start = left = match.start()
            while left > 0 and start - left < 64 and lower[left - 1] in _KEY_CHARS:
                left -= 1
            if not self.is_secret_key(lower[left : match.end("tail")]):
                continue
            value_start, value_end = match.span("value")
            if text[value_start:value_end] == FILTERED:
                continue
            quote = match.group("q") or ""
            parts.append(text[position:value_start])
            parts.append(f"{quote}{FILTERED}{quote}" if quote else FILTERED)
            position = value_end
        if not parts:
            return text
        parts.append(text[position:])
        return "".join(parts)


def _at_boundary(match: re.Match[str]) -> bool:
    start = match.start()
    return start == 0 or not _is_word_char(match.string[start - 1])


def _is_word_char(c: str) -> bool:
    return c == "_" or ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9")


def _filtered_token(match: re.Match[str]) -> str:
    return FILTERED if _at_boundary(match) else match.group()


def _filtered_auth(match: re.Match[str]) -> str:
    value = match.group("value")
    if value.isalpha() and (value.islower() or value.isupper() or value.istitle()):
        return match.group(0)  # a word: "token verification", "Basic Authentication"
    return match.group("head") + FILTERED


def _filtered_pattern(match: re.Match[str]) -> str:
    if "value" in match.re.groupindex and match.group("value") is not None:
        start, end = match.span("value")
        whole_start = match.start()
        text = match.group(0)
        return text[: start - whole_start] + FILTERED + text[end - whole_start :]
    return FILTERED


def _filtered_run(match: re.Match[str]) -> str:
    run = match.group()
    return FILTERED if _high_entropy(run, 32) else run


def _high_entropy(run: str, minimum: int) -> bool:
    """A run that looks random: upper, lower and digits, few slashes, and character
    frequencies close to those of a random string of its length. PostHog project keys
    (``phc_``) are public and stay."""
    if len(run) < minimum or run.startswith(("phc_", "/")) or run.count("/") > 2:
        return False
    run = run[:256]  # the head decides: bounded work for a huge run
    upper = sum(1 for c in run if "A" <= c <= "Z")
    lower = sum(1 for c in run if "a" <= c <= "z")
    digits = sum(1 for c in run if "0" <= c <= "9")
    if upper < 2 or lower < 2 or digits < 2:
        return False
    # Random text changes character class at about 60% of its characters; an identifier
    # (CamelCase, snake_case) at its word boundaries only.
    classes = [_char_class(c) for c in run]
    changes = sum(1 for a, b in itertools.pairwise(classes) if a != b)
    if changes < 0.45 * (len(classes) - 1):
        return False
    counts = Counter(run)
    n = len(run)
    entropy = -sum(k / n * math.log2(k / n) for k in counts.values())
    return entropy >= 0.82 * math.log2(min(n, 64))


def _char_class(c: str) -> int:
    if "a" <= c <= "z":
        return 0
    if "A" <= c <= "Z":
        return 1
    return 2 if "0" <= c <= "9" else 3


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _bounded_repr(value: Any) -> str:
    try:
        text = repr(value)
        if type(text) is not str:
            raise TypeError
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"
    return text[:_MAX_REPR]


class _Walk:
    """One walk over user data, with a budget of values read."""

    def __init__(self, redactor: Redactor, limit: int) -> None:
        self.redactor = redactor
        self.limit = limit
        self.nodes = _MAX_NODES

    def value(self, value: Any, depth: int) -> Any:
        if value is None or isinstance(value, (bool, int, float)):
            return value
        self.nodes -= 1
        if self.nodes < 0:
            return FILTERED
        if isinstance(value, str):
            return self.redactor.text(value, self.limit)
        if depth < _MAX_DEPTH and isinstance(value, dict):
            result: dict[Any, Any] = {}
            for key, item in list(itertools.islice(value.items(), _MAX_ITEMS)):
                if type(key) is not str:
                    key = self.redactor.text(
                        str.__str__(key) if isinstance(key, str) else _bounded_repr(key), 200
                    )
                if (
                    item is not None
                    and not isinstance(item, bool)
                    and self.redactor.is_secret_key(key)
                ):
                    result[key] = FILTERED
                else:
                    result[key] = self.value(item, depth + 1)
            return result
        if depth < _MAX_DEPTH and isinstance(value, (list, tuple, set, frozenset)):
            return [self.value(item, depth + 1) for item in itertools.islice(value, _MAX_ITEMS)]
        return self.redactor.text(_bounded_repr(value), self.limit)


DEFAULT_REDACTOR = Redactor()


def redact(text: str) -> str:
    """``text`` with every secret filtered, by the built-in rules."""
    return DEFAULT_REDACTOR.redact(text)
