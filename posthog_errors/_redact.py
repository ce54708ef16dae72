"""One redaction policy for everything that is sent: the only home of the secret rules.

An exception message often quotes what failed: a database URL with its password, a request
with its ``Authorization`` header; a log record's ``extra``, a bound property or a source
line can hold a token. Every text the library sends goes through one :class:`Redactor`
on the worker thread (so it costs the app nothing): exception values, log messages,
fingerprints, source lines, code variables (see ``_code_variables``), Sentry-derived data
and every user-supplied property and dict key at any depth. What matches is replaced by
``[Filtered]``.

**Keys, by words.** A property or dict key, a variable name, or the name in a
``name=value`` / ``name: value`` / ``"name": "value"`` / ``<name>value</name>`` /
``--name value`` / ``("name", value)`` inside text is split into words (snake_case,
camelCase, kebab-case, dots: ``X-CSRFToken`` -> ``x csrf token``). Trailing qualifiers
(``value``, ``new``, ``confirm``, ``header``, digits, ...) are set aside, and the name is
secret when its last word is a secret noun (password, passwd, passphrase, pass, pwd, pw,
secret, token, auth, authorization, cookie, session, credential(s), creds, dsn, jwt,
bearer, csrf, xsrf, otp, ...), its last two or three words make a secret compound (api key,
private key, secret key, access key, session key, signing key, conn str, connection
string, ...), or it is one word ending in one (``sessionid``, ``csrftoken``, ``PGPASS``,
``dbpassword``; not ``bypass``). So ``session_token`` and ``SMTP_PASS`` are secret, and
``session_count``, ``session_id`` (PostHog's own field), ``token_type``,
``password_strength``, ``auth_method`` and ``cookie_consent`` are not. The whole value
under a secret key is filtered, whatever its type (``None`` and booleans stay). Users add
key words (``redact_keys``), matched anywhere in a key.

**Values.** Known token formats (AWS, GitHub, GitLab, Stripe, Slack, Discord, Google,
OpenAI, Anthropic, Databricks, Shopify, New Relic, Mailchimp, Mailgun, SendGrid, Twilio,
Telegram, npm, PyPI, Hugging Face, Sentry, PostHog personal keys, JWTs, PEM private key
blocks, ...), card numbers (Luhn-valid, with a card network's prefix), URL credentials
(``scheme://user:[Filtered]@host``), Slack, Discord and Teams webhook URLs, Sentry DSN
keys, ``Bearer``/``Basic``/``Token``/``ApiKey``/``Splunk`` values, and AWS-secret-shaped
strings. There is no general entropy rule: a random request ID and a random API key look
the same, so a secret without a known shape is found by its key. Users add regexes
(``redact_patterns``): each match is filtered, or only its ``value`` group.

**Cheap by construction.** A text is first checked with substring tests (the key words'
stems, ``://``, ``PRIVATE KEY``) and one translation that finds runs of 14+ token
characters; only a text that passes runs the rule that can match, and the value rules read
only the long runs. Source lines are checked a chunk of a file at a time, once per file
(see :meth:`Redactor.source_lines`). Every regex is linear, behind a pre-check.

**Redact first, then cut.** A text is cut to twice its final limit (a slice: a 50 MB
value costs what a short one does), redacted, then cut to the limit, so a secret that
straddles the final cut is filtered whole. Whenever a text ends cut (here or on the
caller's thread), a partial secret at its end (a token prefix, ``user:pass`` without its
``@``, a ``Bearer`` value, a long random run) is filtered too.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, AnyStr, cast

__all__ = [
    "DEFAULT_REDACTOR",
    "FILTERED",
    "Redactor",
    "compile_patterns",
    "is_card_number",
    "key_words",
    "redact",
    "split_words",
]


class _LazyPattern:
    """A module-level pattern, compiled on its first use.

    The rules here take about 10 ms to compile, most of them for texts few events hold
    (token formats, card numbers): paid at ``import posthog_errors`` they would be paid by
    every process at start-up, on the main thread. The first attribute read compiles the
    pattern and puts the compiled one in its module-level name, so later reads are plain
    global lookups. Two threads compiling at once compile twice, harmlessly.
    """

    __slots__ = ("_flags", "_name", "_pattern")

    def __init__(self, name: str, pattern: Any, flags: int) -> None:
        self._name = name
        self._pattern = pattern
        self._flags = flags

    def __getattr__(self, attribute: str) -> Any:
        compiled = re.compile(self._pattern, self._flags)
        globals()[self._name] = compiled
        return getattr(compiled, attribute)


def _lazy(name: str, pattern: AnyStr, flags: int = 0) -> re.Pattern[AnyStr]:
    return cast("re.Pattern[AnyStr]", _LazyPattern(name, pattern, flags))


FILTERED = "[Filtered]"

# -- keys, by words ------------------------------------------------------------------------

# snake_case, camelCase, kebab-case, dots, digits: ``X-CSRFToken`` -> X, CSRF, Token.
_WORD = _lazy("_WORD", r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
# A name whose last word is one of these is secret.
_SECRET_NOUNS = frozenset(
    {
        "password", "passwd", "passphrase", "passcode", "pass", "pwd", "pw", "secret",
        "token", "auth", "oauth", "authorization", "cookie", "cookies", "session",
        "credential", "credentials", "creds", "dsn", "jwt", "bearer", "csrf", "xsrf",
        "apikey", "privkey", "sessionid", "sessid", "connstr", "connectionstring",
    }
)  # fmt: skip
# ... or whose last two or three words, joined, are one of these.
_SECRET_COMPOUNDS = frozenset(
    {
        "apikey", "privatekey", "secretkey", "accesskey", "sessionkey", "signingkey",
        "encryptionkey", "accountkey", "masterkey", "authkey", "subscriptionkey", "sshkey",
        "clientkey", "appkey", "licensekey", "connstr", "connectionstring",
        "secretaccesskey", "sastoken",
    }
)  # fmt: skip
# ... or which is one word ending in one of these (``sessionid``, ``PGPASS``).
_SECRET_ENDINGS = (
    "password", "passwd", "passphrase", "pwd", "secret", "token", "apikey", "accesskey",
    "privatekey", "secretkey", "sessionid", "sessid", "cookie", "credentials", "credential",
    "dsn", "jwt", "authorization", "pass",
)  # fmt: skip
# English words ending in "pass" that name no password.
_NOT_PASSWORDS = frozenset(
    {
        "bypass", "compass", "encompass", "overpass", "underpass", "surpass", "trespass",
        "multipass", "onepass", "firstpass", "secondpass", "impass", "boardingpass",
    }
)  # fmt: skip
# Trailing words that qualify the noun before them: ``password_confirm``, ``token_value``.
_QUALIFIERS = frozenset(
    {
        "value", "val", "raw", "plain", "plaintext", "text", "new", "old", "confirm",
        "confirmation", "again", "repeat", "current", "encoded", "enc", "b64", "base64",
        "hex", "bytes", "header", "hdr", "env", "var", "param", "input", "field", "string",
        "str", "data", "file", "hash", "digest", "encrypted", "hashed",
    }
)  # fmt: skip
# Qualifiers that, last, mean the value is not the secret itself.
_HARMLESS_QUALIFIERS = frozenset({"file", "hash", "digest", "hashed", "encrypted"})
# Header names whose value is ``<scheme> <credential>``, and cookie headers (a whole line).
_AUTH_HEADERS = frozenset({"authorization", "proxyauthorization", "xauthorization", "auth"})
_COOKIE_HEADERS = frozenset({"cookie", "setcookie", "cookies"})
# Query parameters that carry a signature: secret only in a URL (``?sig=``).
_URL_ONLY_KEYS = frozenset({"sig", "signature", "xamzsignature", "xamzcredential"})

_NOT_KEY_CHARS = _lazy("_NOT_KEY_CHARS", r"[^a-z0-9]+")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-$")
_KEY_CACHE_LIMIT = 4096
_MAX_NAME = 64

# Lower-case stems: every secret noun, compound and scheme contains one. A text without any
# of them cannot hold a ``name=value`` secret or a bare scheme value.
_KEY_STEMS = (
    "pass", "pw", "secret", "token", "auth", "cookie", "sess", "cred", "dsn", "jwt",
    "bearer", "srf", "key", "conn", "sig=",
)  # fmt: skip
# Stems of the auth schemes whose value is filtered (``ApiKey`` and ``Api-Key`` hold "key").
_SCHEME_STEMS = ("bearer", "basic", "digest", "token", "splunk", "key")

# -- values --------------------------------------------------------------------------------

# Known token formats (gitleaks and detect-secrets rules, and vendors' documentation). Each
# starts with a literal; a match must start at a word boundary (checked in code, so that the
# engine skips to candidate characters).
_TOKEN_FORMATS = [
    r"(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA)[0-9A-Z]{16}(?![0-9A-Z])",  # AWS
    r"[sr]k_(?:live|test)_[0-9A-Za-z]{10,}",  # Stripe secret and restricted keys
    r"whsec_[0-9A-Za-z]{10,}",  # Stripe webhook secret
    r"eyJ[0-9A-Za-z_-]{5,}\.eyJ[0-9A-Za-z_-]{5,}\.[0-9A-Za-z_-]*",  # JWT
    r"gh[pousr]_[0-9A-Za-z]{20,}",  # GitHub tokens
    r"github_pat_[0-9A-Za-z_]{20,}",
    r"xox[abposre]-[0-9A-Za-z-]{10,}",  # Slack
    r"xapp-\d-[0-9A-Za-z-]{10,}",  # Slack app-level token
    r"AIza[0-9A-Za-z_-]{35}",  # Google API key
    r"ya29\.[0-9A-Za-z_-]{20,}",  # Google OAuth access token
    r"1//0[0-9A-Za-z_-]{30,}",  # Google OAuth refresh token
    r"GOCSPX-[0-9A-Za-z_-]{20,}",  # Google OAuth client secret
    r"gl(?:pat|dt|ptt|rt|soat|cbt|ft|imt|agent)-[0-9A-Za-z_-]{20,}",  # GitLab
    r"npm_[0-9A-Za-z]{36}",  # npm
    r"pypi-AgE[0-9A-Za-z_-]{50,}",  # PyPI
    r"SG\.[0-9A-Za-z_-]{16,}\.[0-9A-Za-z_-]{16,}",  # SendGrid
    r"phx_[0-9A-Za-z]{20,}",  # PostHog personal API key (phc_ project keys are public)
    r"sk-(?:proj-|ant-[a-z0-9]{2,8}-|svcacct-|admin-)?[0-9A-Za-z_-]{20,}",  # OpenAI, Anthropic
    r"dapi[0-9a-f]{32}(?:-\d+)?",  # Databricks
    r"shp(?:at|ss|ca|pa)_[0-9a-fA-F]{32}",  # Shopify
    r"NR(?:AK|JS|II|MA|RA)-[0-9A-Za-z_-]{27,32}",  # New Relic
    r"hf_[A-Za-z0-9]{30,}",  # Hugging Face
    r"sntry[su]_[0-9A-Za-z+/=_-]{20,}",  # Sentry auth tokens
    r"do[opr]_v1_[0-9a-f]{64}",  # DigitalOcean
    r"lin_api_[0-9A-Za-z]{40}",  # Linear
    r"ntn_[0-9A-Za-z]{40,}",  # Notion
    r"secret_[0-9A-Za-z]{43}",  # Notion (legacy)
    r"PMAK-[0-9a-f]{24}-[0-9a-f]{34}",  # Postman
    r"xkeysib-[0-9a-f]{64}-[0-9A-Za-z]{16}",  # Brevo / Sendinblue
    r"glsa_[0-9A-Za-z]{32}_[0-9a-f]{8}",  # Grafana service account
    r"glc_[0-9A-Za-z+/]{32,}={0,2}",  # Grafana Cloud
    r"sq0(?:atp|csp)-[0-9A-Za-z_-]{22,}",  # Square
    r"EAAA[0-9A-Za-z_-]{60}",  # Square access token
    r"ATATT3[0-9A-Za-z_=-]{50,}",  # Atlassian API token
    r"dp\.(?:pt|st|sa|ct|scrt)\.[0-9A-Za-z]{40,}",  # Doppler
    r"pul-[0-9a-f]{40}",  # Pulumi
    r"AGE-SECRET-KEY-1[0-9A-Z]{58}",  # age
    r"key-[0-9a-f]{32}(?![0-9a-zA-Z])",  # Mailgun
    r"SK[0-9a-f]{32}(?![0-9a-zA-Z])",  # Twilio API key
    r"AC[0-9a-f]{32}(?![0-9a-zA-Z])",  # Twilio account SID (with its auth token, a login)
    r"[MNO][A-Za-z0-9_-]{23,25}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,38}",  # Discord bot token
    r"hvs\.[0-9A-Za-z_-]{24,}",  # HashiCorp Vault service token
    r"ops_eyJ[0-9A-Za-z+/=_-]{20,}",  # 1Password service account
    r"dckr_pat_[0-9A-Za-z_-]{27}",  # Docker Hub
    r"rubygems_[0-9a-f]{48}",  # RubyGems
    r"pk\.eyJ[0-9A-Za-z_-]{20,}\.[0-9A-Za-z_-]{20,}",  # Mapbox
    r"sl\.[0-9A-Za-z_-]{130,}",  # Dropbox short-lived
    r"figd_[0-9A-Za-z_-]{40,}",  # Figma
    r"CFPAT-[0-9A-Za-z_-]{43}",  # Contentful
    r"r8_[0-9A-Za-z]{37}",  # Replicate
    r"gsk_[0-9A-Za-z]{48,}",  # Groq
    r"pat[0-9A-Za-z]{14}\.[0-9a-f]{64}",  # Airtable
    r"[0-9a-f]{32}-us\d{1,2}(?![0-9A-Za-z])",  # Mailchimp
    r"\d{8,10}:AA[0-9A-Za-z_-]{33}",  # Telegram bot token
    # An AWS secret access key: 40 characters of base64 with a / or +, and mixed case.
    r"(?=[0-9A-Za-z+/]{0,39}[+/])(?=[0-9A-Za-z+/]{0,39}[a-z])(?=[0-9A-Za-z+/]{0,39}[A-Z])"
    r"[0-9A-Za-z+/]{40}(?![0-9A-Za-z+/=])",
]
_TOKEN_FORMAT = _lazy("_TOKEN_FORMAT", "|".join(_TOKEN_FORMATS))
_TOKEN_FORMAT_BYTES = _lazy("_TOKEN_FORMAT_BYTES", "|".join(_TOKEN_FORMATS).encode("ascii"))
# The same formats' prefixes: at the end of a cut text, a prefix and anything after it.
_TOKEN_PREFIX_AT_END = _lazy(
    "_TOKEN_PREFIX_AT_END",
    r"(?<![A-Za-z0-9_])(?:AKIA|ASIA|ABIA|ACCA|[sr]k_live_|[sr]k_test_|whsec_|eyJ|gh[pousr]_"
    r"|github_pat_|xox[abposre]-|xapp-|AIza|ya29\.|GOCSPX-|gl(?:pat|dt|ptt|rt|soat|cbt)-"
    r"|npm_|pypi-|SG\.|phx_|sk-|dapi|shp(?:at|ss|ca|pa)_|NRAK-|NRII-|hf_|sntry[su]_"
    r"|do[opr]_v1_|lin_api_|ntn_|PMAK-|xkeysib-|glsa_|glc_|sq0atp-|sq0csp-|ATATT|dp\."
    r"|pul-|AGE-SECRET-KEY-|hvs\.|dckr_pat_|figd_|gsk_)[0-9A-Za-z_+/=.:-]*\Z",
)
# Card numbers: 13 to 19 digits, alone or in groups of 4 (Amex 4-6-5) split by a space or a
# dash; then the Luhn check and a card network's prefix (see ``is_card_number``).
_CARD_PATTERN = (
    r"(?<![0-9A-Za-z_.\-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}|\d{4}([ -])\d{6}\2\d{5})"
    r"(?![0-9A-Za-z_]|[.\-]\d)"
)
_CARD = _lazy("_CARD", _CARD_PATTERN)
_CARD_BYTES = _lazy("_CARD_BYTES", _CARD_PATTERN.encode("ascii"))
_CARD_PREFIX = _lazy(
    "_CARD_PREFIX",
    r"4|5[1-5]|2(?:2[2-9]|[3-6]|7[01]|720)|3[47]|3(?:0[0-5]|[68])|6(?:011|5|4[4-9]|2)|35(?:2[89]|[3-8])",
)

# -----BEGIN ... PRIVATE KEY----- through its END line, or to the end of a cut text.
_PEM = _lazy(
    "_PEM",
    r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----.*?"
    r"(?:-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|\Z)",
    re.DOTALL,
)
# scheme://user:password@host -> scheme://user:[Filtered]@host (the last @ before the path)
_URL_CREDENTIALS = _lazy(
    "_URL_CREDENTIALS",
    r"(?P<head>(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{0,30}://[^:@/\s]{0,256}):"
    r"[^/\s]{0,256}@",
)
# ... and a password holding a "/": the first @ that is followed by a host.
_URL_SLASHED_PASSWORD = _lazy(
    "_URL_SLASHED_PASSWORD",
    r"(?P<head>(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{0,30}://[^:@/\s]{0,256}):"
    r"(?P<password>[^@\s]{0,256}?)@(?=[A-Za-z0-9\[][A-Za-z0-9.\-\]]*(?::\d{1,5})?(?:[/?#\s'\"]|\Z))",
)
_URL_CREDENTIALS_AT_END = _lazy(
    "_URL_CREDENTIALS_AT_END",
    r"(?P<head>(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{0,30}://[^:@/\s]{0,256}):"
    r"[^@/\s]*\Z",
)
# https://<32 hex>[:<32 hex>]@host/1: a Sentry DSN's key.
_SENTRY_DSN = _lazy("_SENTRY_DSN", r"(?P<head>https?://)[0-9a-f]{32}(?::[0-9a-f]{32})?@")
# Webhook URLs whose path is the secret.
_WEBHOOK = _lazy(
    "_WEBHOOK",
    r"(?P<head>https://(?:hooks\.slack\.com/(?:services|workflows|triggers)/"
    r"|(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d{5,30}/"
    r"|[A-Za-z0-9-]{1,64}\.webhook\.office\.com/webhookb2/"
    r"|hooks\.zapier\.com/hooks/catch/))(?P<value>[A-Za-z0-9_@/+=.-]{8,})",
)
# Bearer abc..., "Basic dXNlcjpw...", token 3f9a..., ApiKey x, Splunk <uuid> (a value with a
# digit, a symbol or mixed case: "token expired", "basic authentication" stay)
_AUTH_SCHEME = _lazy(
    "_AUTH_SCHEME",
    r"(?P<head>(?<![A-Za-z0-9_-])(?:bearer|basic|digest|token|api-?key|splunk)[ \t]+)"
    r"(?P<value>[A-Za-z0-9\-._~+/]{8,}=*)",
    re.IGNORECASE,
)
_AUTH_SCHEME_AT_END = _lazy(
    "_AUTH_SCHEME_AT_END", r"(?P<head>\b(?:bearer|basic|digest|api-?key|splunk)[ \t]+)\S*\Z", re.I
)
# A scheme word before a credential in an Authorization header's value.
_SCHEME_WORD = _lazy(
    "_SCHEME_WORD", r"(?:[A-Za-z][A-Za-z-]{1,19}|AWS4-HMAC-SHA256)[ \t]+(?=[^\s'\"])"
)
# <password>x</password>, <wsse:Password Type="...">x</wsse:Password>
_XML_ELEMENT = _lazy(
    "_XML_ELEMENT",
    r"<(?P<tag>(?:[A-Za-z_][\w.-]{0,40}:)?(?P<local>[A-Za-z_][\w.-]{0,64}))(?:\s[^<>]{0,512})?>"
    r"(?P<value>[^<]{1,4096})</(?P=tag)\s*>",
)
_SSHPASS = _lazy(
    "_SSHPASS",
    r"\bsshpass[ \t]+-p[ \t]*\\*"
    r"(?:'(?P<single>[^'\n]*)'|\"(?P<double>[^\"\n]*)\"|(?P<plain>[^\s'\"\\]+))",
)
# A value after ``name=`` (etc.): quoted to its closing quote or the end of the line,
# bracketed, or running to a separator.
_PLAIN_VALUE = _lazy("_PLAIN_VALUE", r"[^\s,;&'\"}\])<>\\]+")
_BRACKETS = {"(": ")", "[": "]", "{": "}"}
# Runs of 14+ characters that a token is made of: the only places a value rule can match.
_RUN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.+/=:"
_KEEP_RUN = bytes(i if i in _RUN_CHARS else 32 for i in range(256))
_AS_RUN = bytes(97 if i in _RUN_CHARS else 32 for i in range(256))
_LONG_RUN = b"a" * 13
# Digits (0) and spaces (1): two groups of 4 digits split by a space may start a card.
_CARD_GROUPS_TABLE = bytes(48 if 48 <= i <= 57 else 49 if i == 32 else 46 for i in range(256))
_CARD_GROUPS = b"000010000"
_RUN_AT_END = _lazy("_RUN_AT_END", r"(?<![A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{16,}={0,2}\Z")
# How much of a cut text's end is checked for a partial secret.
_TAIL = 600
_CUT_MARK = "..."
# Source files: lines are checked this many at a time, and verdicts kept for this many files.
_CHUNK = 32
CHUNK = _CHUNK  # source lines checked together (see Redactor.source_lines)
_SOURCE_FILES = 256
# Bounds of the walk over user properties: beyond them a value is filtered, never sent
# unread.
_MAX_ITEMS = 100
_MAX_DEPTH = 8
_MAX_NODES = 5000
_MAX_REPR = 4096
_MAX_KEY_TEXT = 200


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


def split_words(name: str) -> list[str]:
    """A name's words, lower case: ``X-CSRFToken`` -> ``["x", "csrf", "token"]``."""
    return [word.lower() for word in _WORD.findall(name[:256])]


def _words_are_secret(words: Sequence[str]) -> bool:
    """The key-word rule (see the module docstring), on a name's words."""
    if not words:
        return False
    stripped = list(words)
    while len(stripped) > 1 and (stripped[-1] in _QUALIFIERS or stripped[-1].isdigit()):
        if stripped[-1] in _HARMLESS_QUALIFIERS:
            return False  # password_hash, token_file: not the secret itself
        stripped.pop()
    for sequence in (words, stripped):
        last = sequence[-1]
        if last in _SECRET_NOUNS:
            return True
        if len(sequence) > 1 and (
            sequence[-2] + last in _SECRET_COMPOUNDS
            or (len(sequence) > 2 and "".join(sequence[-3:]) in _SECRET_COMPOUNDS)
        ):
            return True
    if len(words) == 1:
        word = words[0]
        for ending in _SECRET_ENDINGS:
            if word.endswith(ending) and len(word) > len(ending):
                return ending != "pass" or word not in _NOT_PASSWORDS
    return False


def is_card_number(digits: str) -> bool:
    """13 to 19 digits with a card network's prefix and a valid Luhn check digit."""
    if not 13 <= len(digits) <= 19 or not digits.isdigit() or not _CARD_PREFIX.match(digits):
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if index % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


class Redactor:
    """The policy: the built-in rules plus a user's ``redact_keys`` and ``redact_patterns``.

    Built once per set of options (see ``PayloadOptions.redactor``); thread-safe.
    """

    def __init__(self, keys: Iterable[str] = (), patterns: Iterable[re.Pattern[str]] = ()) -> None:
        self.keys = key_words(tuple(keys))
        self.patterns = tuple(patterns)
        self._user_keys = tuple(_NOT_KEY_CHARS.sub("", key.lower()) for key in self.keys)
        self._user_written = tuple(
            re.compile(
                r"[_.\- ]?".join(
                    re.escape(part) for part in re.split(r"[^A-Za-z0-9]+", key.lower()) if part
                )
            )
            for key in self.keys
        )
        # A user key's stems: its first part, as written in text.
        user_stems = tuple(
            part.lower() for key in self.keys for part in re.split(r"[^A-Za-z0-9]+", key)[:1]
        )
        self._user_stems = user_stems
        self._stems = tuple(dict.fromkeys((*_KEY_STEMS, *_SCHEME_STEMS, *user_stems)))
        self._key_cache: dict[str, bool] = {}
        # id(lines) -> (lines, verdict per chunk: 0 unknown, 1 clean, 2 to check per line)
        self._sources: dict[int, tuple[list[str], bytearray]] = {}

    # -- keys --------------------------------------------------------------------------

    def is_secret_key(self, key: str) -> bool:
        """Whether the value under ``key`` (a property, dict key or variable name) is
        filtered whole: decided on the key's words (see the module docstring)."""
        cached = self._key_cache.get(key)
        if cached is None:
            cached = _words_are_secret(split_words(key))
            if not cached and self._user_keys:
                normal = _NOT_KEY_CHARS.sub("", key[:256].lower())
                cached = any(word in normal for word in self._user_keys)
            if len(self._key_cache) >= _KEY_CACHE_LIMIT:
                self._key_cache.clear()
            self._key_cache[key] = cached
        return cached

    # -- text --------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        """``text`` with every secret filtered (no cut: for bounded text only)."""
        if not text:
            return text
        lower = text.lower()
        stems = list(itertools.compress(self._stems, map(lower.__contains__, self._stems)))
        if "://" in text:
            text = self._filter_urls(text)
        if "PRIVATE KEY" in text:
            text = _PEM.sub(FILTERED, text)
        if stems:
            if len(lower) != len(text):
                lower = text.lower()
            text = self._filter_names(text, lower, stems)
            if any(stem in _SCHEME_STEMS for stem in stems):
                text = _AUTH_SCHEME.sub(_filtered_auth, text)
        if self._has_value_candidate(text):
            text = _TOKEN_FORMAT.sub(_filtered_token, text)
            text = _CARD.sub(_filtered_card, text)
        for pattern in self.patterns:
            text = pattern.sub(_filtered_pattern, text)
        return text

    def might_hold_secret(self, text: str) -> bool:
        """False only when :meth:`redact` would leave ``text`` as it is (a cheap check)."""
        if not text:
            return False
        if self.patterns or "://" in text or "PRIVATE KEY" in text:
            return True
        if any(map(text.lower().__contains__, self._stems)):
            return True
        return self._has_value_candidate(text)

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

    def source_lines(self, lines: list[str], start: int, end: int, limit: int) -> list[str]:
        """``lines[start:end]`` of a source file (as :mod:`linecache` holds it), without
        their line ends, each redacted and cut to ``limit`` as :meth:`text` does.

        A file is checked ``_CHUNK`` lines at a time, each chunk once (the verdict is kept
        while linecache keeps the same list): a chunk without a candidate costs nothing
        more, and only the lines of a suspect chunk that hold one are redacted.
        """
        start, end = max(0, start), min(end, len(lines))
        window = [line.rstrip("\r\n") for line in lines[start:end]]
        if not self.window_suspect(lines, start, end, limit):
            return window
        return [self.checked_line(line, limit) for line in window]

    def window_suspect(self, lines: list[str], start: int, end: int, limit: int) -> bool:
        """Whether ``lines[start:end]`` touches a suspect chunk (see :meth:`source_lines`):
        then each of its lines is checked on its own (:meth:`checked_line`)."""
        start, end = max(0, start), min(end, len(lines))
        # No lock: dict operations are atomic, and two threads checking one chunk at once
        # reach the same verdict.
        entry = self._sources.get(id(lines))
        if entry is None or entry[0] is not lines:
            if len(self._sources) >= _SOURCE_FILES:
                self._sources.clear()
            entry = (lines, bytearray((len(lines) + _CHUNK - 1) // _CHUNK))
            self._sources[id(lines)] = entry
        verdicts = entry[1]
        suspect = False
        for chunk in range(start // _CHUNK, (end - 1) // _CHUNK + 1 if end > start else 0):
            verdict = verdicts[chunk]
            if verdict == 0:
                block = lines[chunk * _CHUNK : (chunk + 1) * _CHUNK]
                verdict = 2 if self.chunk_suspect(block, limit) else 1
                verdicts[chunk] = verdict
            suspect = suspect or verdict == 2
        return suspect

    def chunk_suspect(self, block: list[str], limit: int) -> bool:
        """Whether a chunk of ``CHUNK`` source lines (with their line ends) has a line over
        ``limit`` or could hold a secret: then a window touching it is checked line by
        line (:meth:`checked_line`)."""
        long_line = max(map(len, block), default=0) > limit
        return long_line or self.might_hold_secret("\n".join(block))

    def checked_line(self, line: str, limit: int) -> str:
        """One source line (its line end stripped) of a suspect window, as
        :meth:`source_lines` returns it: redacted and cut when it could hold a secret or is
        over ``limit``."""
        return self.text(line, limit) if len(line) > limit or self.might_hold_secret(line) else line

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
        """Whether ``text`` holds a credential by its value alone: a token format, a card
        number, a PEM key, URL credentials or a user pattern (names and assignments
        aside)."""
        if self._has_value_candidate(text):
            if any(_at_boundary(match) for match in _TOKEN_FORMAT.finditer(text)):
                return True
            if any(_filtered_card(match) == FILTERED for match in _CARD.finditer(text)):
                return True
        if "PRIVATE KEY" in text and _PEM.search(text):
            return True
        if "://" in text and self._filter_urls(text) != text:
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
        """A redacted copy of user properties: keys checked (and redacted: a secret can be
        a key), every text redacted, at any depth (dicts, lists, tuples, sets, and
        ``(name, value)`` pairs), and any other object by its (redacted) repr."""
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

    # -- rules -------------------------------------------------------------------------

    def _has_value_candidate(self, text: str) -> bool:
        """Whether a value rule (token formats, cards) could match: a run of 14+ token
        characters that holds one, or digits grouped like a card's."""
        raw = text.encode("ascii", "replace")
        if _LONG_RUN in raw.translate(_AS_RUN):
            for run in raw.translate(_KEEP_RUN).split():
                if len(run) >= 13 and (
                    _TOKEN_FORMAT_BYTES.search(run) is not None or _card_in(run)
                ):
                    return True
        return _CARD_GROUPS in raw.translate(_CARD_GROUPS_TABLE)

    def _filter_urls(self, text: str) -> str:
        if "@" in text:
            text = _SENTRY_DSN.sub(rf"\g<head>{FILTERED}@", text)
            text = _URL_CREDENTIALS.sub(rf"\g<head>:{FILTERED}@", text)
            text = _URL_SLASHED_PASSWORD.sub(_filtered_slashed_password, text)
        if "hook" in text:
            text = _WEBHOOK.sub(rf"\g<head>{FILTERED}", text)
        return text

    def _filter_names(self, text: str, lower: str, stems: list[str]) -> str:
        """Values after secret names: ``name=value``, ``"name": "value"``, ``--name value``,
        ``("name", "value")``, ``<name>value</name>``, ``sshpass -p value``; each name is
        found from a stem and judged whole, by its words."""
        spans: list[tuple[int, int]] = []
        seen: set[int] = set()
        for stem in stems:
            if stem not in _KEY_STEMS and stem not in self._user_stems:
                continue
            position = lower.find(stem)
            while position != -1:
                left = position
                while left > 0 and position - left < _MAX_NAME and text[left - 1] in _NAME_CHARS:
                    left -= 1
                right = position + len(stem.rstrip("="))
                while (
                    right < len(text)
                    and right - position < _MAX_NAME
                    and (text[right] in _NAME_CHARS)
                ):
                    right += 1
                if left not in seen:
                    seen.add(left)
                    span = self._assignment(text, left, right)
                    if span is not None:
                        spans.append(span)
                position = lower.find(stem, max(right, position + 1))
        if "</" in text:
            for match in _XML_ELEMENT.finditer(text):
                if self._is_secret_name(match.group("local")):
                    spans.append(match.span("value"))
        if "sshpass" in lower:
            for match in _SSHPASS.finditer(text):
                group = next(g for g in ("single", "double", "plain") if match.group(g) is not None)
                spans.append(_unescaped_end(text, *match.span(group)))
        return _replace_spans(text, spans)

    def _is_secret_name(self, name: str) -> bool:
        if self.is_secret_key(name):
            return True
        return bool(self._user_written) and any(
            pattern.search(name.lower()) for pattern in self._user_written
        )

    def _assignment(self, text: str, left: int, right: int) -> tuple[int, int] | None:
        """The value's span when ``text[left:right]`` is a secret name followed by a value."""
        name = text[left:right].strip(".-$")
        flag = text[left:right].startswith("-")
        name_end = right - (len(text[left:right]) - len(text[left:right].rstrip(".-$")))
        if not name:
            return None
        words = _NOT_KEY_CHARS.sub("", name.lower())
        url_only = words in _URL_ONLY_KEYS
        if url_only:
            if left == 0 or text[left - 1] not in "?&":
                return None
        elif not self._is_secret_name(name):
            return None
        n = len(text)
        position = name_end
        quoted_name = False
        while position < n and position - name_end < 16 and text[position] == "\\":
            position += 1
        if position < n and text[position] in "'\"":
            quoted_name = left > 0 and text[left - 1] in "'\"\\"
            position += 1
        position = _skip_blanks(text, position)
        separator = text[position : position + 2]
        if separator in ("=>", ":="):
            position += 2
        elif separator[:1] in ("=", ":"):
            if separator == "::":
                return None  # Class::method
            position += 1
        elif separator[:1] == "," and quoted_name and _opens_pair(text, left):
            position += 1
        elif flag and position > name_end and position < n and text[position] not in "-=":
            pass  # --password value
        else:
            return None
        position = _skip_blanks(text, position)
        if position >= n:
            return None
        kind = words.replace("_", "")
        if kind in _COOKIE_HEADERS:
            return _rest_of_value(text, position)
        if kind in _AUTH_HEADERS:
            scheme = _SCHEME_WORD.match(text, position)
            if scheme is not None and text[position] not in "'\"":
                position = scheme.end()
            elif text[position] in "'\"":
                inner = _SCHEME_WORD.match(text, position + 1)
                if inner is not None:
                    span = _rest_of_value(text, inner.end(), quote=text[position])
                    return span
        return _value_span(text, position)


def _skip_blanks(text: str, position: int) -> int:
    end = min(len(text), position + 16)
    while position < end and text[position] in " \t":
        position += 1
    return position


def _opens_pair(text: str, left: int) -> bool:
    """``("name", value)`` or ``["name", value]``: an opening bracket before the quote."""
    position = left - 2
    while position >= 0 and text[position] in " \t\\":
        position -= 1
    return position >= 0 and text[position] in "(["


def _value_span(text: str, position: int) -> tuple[int, int] | None:
    """The value's span (inside its quotes, if quoted) at ``position``."""
    if text.startswith(FILTERED, position):
        return None
    opener = position
    while opener < len(text) and opener - position < 16 and text[opener] == "\\":
        opener += 1
    first = text[opener : opener + 1]
    if first and first in "'\"":
        start = end = opener + 1
        while end < len(text) and text[end] != first and text[end] != "\n":
            end += 1
        return _unescaped_end(text, start, end) if end > start else None
    if opener > position:
        return None
    if first in _BRACKETS:
        close = text.find(_BRACKETS[first], position)
        newline = text.find("\n", position)
        if close == -1 or (newline != -1 and newline < close):
            close = (newline if newline != -1 else len(text)) - 1
        return position, close + 1
    match = _PLAIN_VALUE.match(text, position)
    return match.span() if match is not None else None


def _unescaped_end(text: str, start: int, end: int) -> tuple[int, int]:
    """``(start, end)`` without the backslashes that escape the closing quote."""
    while end > start and text[end - 1] == "\\":
        end -= 1
    return start, end


def _rest_of_value(text: str, position: int, quote: str = "") -> tuple[int, int] | None:
    """To the closing quote, else the end of the line: a header's whole value."""
    if not quote and text[position : position + 1] in ("'", '"'):
        quote = text[position]
        position += 1
    end = position
    while end < len(text) and text[end] != "\n" and (not quote or text[end] != quote):
        end += 1
    while end > position and text[end - 1] in " \t\r":
        end -= 1
    return (position, end) if end > position else None


def _replace_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """Each span replaced by the mark; overlapping spans merged."""
    if not spans:
        return text
    parts: list[str] = []
    position = 0
    for start, end in sorted(spans):
        if end <= position or end <= start:
            continue
        start = max(start, position)
        parts.append(text[position:start])
        parts.append(FILTERED)
        position = end
    parts.append(text[position:])
    return "".join(parts)


def _card_in(run: bytes) -> bool:
    return any(
        is_card_number(match.group().replace(b"-", b"").decode("ascii"))
        for match in _CARD_BYTES.finditer(run)
    )


def _at_boundary(match: re.Match[str]) -> bool:
    start = match.start()
    return start == 0 or not _is_word_char(match.string[start - 1])


def _is_word_char(c: str) -> bool:
    return c == "_" or ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9")


def _filtered_token(match: re.Match[str]) -> str:
    return FILTERED if _at_boundary(match) else match.group()


def _filtered_card(match: re.Match[str]) -> str:
    digits = match.group().replace(" ", "").replace("-", "")
    return FILTERED if is_card_number(digits) else match.group()


def _filtered_slashed_password(match: re.Match[str]) -> str:
    password = match.group("password")
    head, slash, _ = password.partition("/")
    if not slash or head.isdigit() or password == FILTERED:
        return match.group()  # no slash (done already), or host:port/path@...
    return f"{match.group('head')}:{FILTERED}@"


def _filtered_auth(match: re.Match[str]) -> str:
    value = match.group("value")
    if value == FILTERED[1:-1] or value.startswith("Filtered"):
        return match.group(0)
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


def _high_entropy(run: str, minimum: int) -> bool:
    """A run that looks random (for the partial secret at a cut end only): upper, lower
    and digits, frequent changes of character class, near-random character frequencies.
    PostHog project keys (``phc_``) are public and stay."""
    if len(run) < minimum or run.startswith(("phc_", "/")) or run.count("/") > 2:
        return False
    run = run[:256]  # the head decides: bounded work for a huge run
    upper = sum(1 for c in run if "A" <= c <= "Z")
    lower = sum(1 for c in run if "a" <= c <= "z")
    digits = sum(1 for c in run if "0" <= c <= "9")
    if upper < 2 or lower < 2 or digits < 2:
        return False
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
        if value is None or isinstance(value, (bool, float)):
            return value
        if isinstance(value, int):
            return (
                FILTERED
                if 10**12 <= abs(value) < 10**19 and is_card_number(str(abs(int(value))))
                else value
            )
        self.nodes -= 1
        if self.nodes < 0:
            return FILTERED
        if isinstance(value, str):
            return self.redactor.text(value, self.limit)
        if depth < _MAX_DEPTH and isinstance(value, dict):
            result: dict[Any, Any] = {}
            for key, item in list(itertools.islice(value.items(), _MAX_ITEMS)):
                name = str.__str__(key) if isinstance(key, str) else _bounded_repr(key)
                shown = self.redactor.text(name, _MAX_KEY_TEXT)
                if (
                    item is not None
                    and not isinstance(item, bool)
                    and self.redactor.is_secret_key(name)
                ):
                    result[shown] = FILTERED
                else:
                    result[shown] = self.value(item, depth + 1)
            return result
        if depth < _MAX_DEPTH and isinstance(value, (list, tuple, set, frozenset)):
            items = list(itertools.islice(value, _MAX_ITEMS))
            if (
                len(items) == 2
                and isinstance(items[0], str)
                and items[1] is not None
                and not isinstance(items[1], bool)
                and self.redactor.is_secret_key(items[0])
            ):  # ("password", value)
                return [self.redactor.text(items[0], _MAX_KEY_TEXT), FILTERED]
            return [self.value(item, depth + 1) for item in items]
        return self.redactor.text(_bounded_repr(value), self.limit)


DEFAULT_REDACTOR = Redactor()


def redact(text: str) -> str:
    """``text`` with every secret filtered, by the built-in rules."""
    return DEFAULT_REDACTOR.redact(text)
