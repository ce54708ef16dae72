"""A labelled corpus for the redaction policy, scored like a classifier.

Secrets (each with the distinctive part that must never be sent) and ordinary values
(each must arrive exactly as it was), every entry labelled by vendor or kind and by the
form it takes. Shapes follow public rule sets (gitleaks' rules, Yelp detect-secrets'
plugins, posthog-python's own detector) and vendors' documentation; every token is assembled
at run time from a seeded generator, so this file holds nothing a secret scanner flags.
"""

from __future__ import annotations

import dataclasses
import random
import string
import uuid
from typing import Any

__all__ = [
    "ORDINARY_KEYS",
    "ORDINARY_TEXTS",
    "SECRET_KEYS",
    "SECRET_TEXTS",
    "SECRET_TOKENS",
    "Ordinary",
    "Secret",
    "luhn_complete",
]

_rng = random.Random(2023)
ALNUM = string.ascii_letters + string.digits
UPPER = string.ascii_uppercase + string.digits
HEX = "0123456789abcdef"
URLSAFE = ALNUM + "_-"


def body(alphabet: str, n: int) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


def tok(*parts: str) -> str:
    return "".join(parts)


@dataclasses.dataclass(frozen=True)
class Secret:
    label: str  # vendor or kind
    form: str  # bare, env, json, url, header, cookie, yaml, xml, cli, pair, ...
    text: str  # the text as it would appear
    part: str  # its distinctive part: never on the wire


@dataclasses.dataclass(frozen=True)
class Ordinary:
    label: str
    text: str


def luhn_complete(prefix: str, length: int) -> str:
    """A card number with ``prefix``, ``length`` digits, and a valid Luhn check digit."""
    digits = prefix + body(string.digits, length - len(prefix) - 1)
    total = 0
    for index, char in enumerate(reversed(digits)):
        d = int(char)
        if index % 2 == 0:  # doubled: the check digit will shift every position by one
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return digits + str((10 - total % 10) % 10)


def luhn_invalid(prefix: str, length: int) -> str:
    valid = luhn_complete(prefix, length)
    return valid[:-1] + str((int(valid[-1]) + 1) % 10)


# -- vendor tokens: (vendor, token, distinctive part) -------------------------------------


def _tokens() -> list[tuple[str, str, str]]:
    t: list[tuple[str, str, str]] = []

    def add(label: str, value: str, skip: int) -> None:
        t.append((label, value, value[skip:]))

    add("aws-access-key-id", tok("AK", "IA", body(UPPER, 16)), 4)
    add("aws-sts-key-id", tok("AS", "IA", body(UPPER, 16)), 4)
    secret40 = body(ALNUM, 18) + "/" + body(ALNUM, 10) + "+" + body(ALNUM, 10)
    add("aws-secret-access-key", secret40, 0)
    for prefix in ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"):
        add(f"github-{prefix}", tok(prefix[:2], prefix[2:], body(ALNUM, 36)), 4)
    add("github-fine-grained", tok("github", "_pat_", body(ALNUM, 22), "_", body(ALNUM, 59)), 11)
    for prefix in ("glpat-", "gldt-", "glrt-"):
        add(f"gitlab-{prefix}", tok(prefix[:2], prefix[2:], body(URLSAFE, 20)), len(prefix))
    for prefix in ("sk_live_", "sk_test_", "rk_live_"):
        add(f"stripe-{prefix}", tok(prefix[:2], prefix[2:], body(ALNUM, 24)), len(prefix))
    add("stripe-webhook", tok("wh", "sec_", body(ALNUM, 32)), 6)
    for prefix in ("xoxb-", "xoxp-", "xoxa-"):
        add(
            f"slack-{prefix}",
            tok(prefix[:3], prefix[3:], body(string.digits, 12), "-", body(ALNUM, 24)),
            5,
        )
    add("slack-app", tok("xa", "pp-1-", body(UPPER, 11), "-", body(ALNUM, 30)), 7)
    add(
        "discord-bot",
        tok("M", body(ALNUM, 23), ".", body(URLSAFE, 6), ".", body(URLSAFE, 27)),
        1,
    )
    add("google-api-key", tok("AI", "za", body(URLSAFE, 35)), 4)
    add("google-oauth-access", tok("ya", "29.", body(URLSAFE, 60)), 5)
    add("google-oauth-refresh", tok("1/", "/0", body(URLSAFE, 60)), 4)
    add("google-client-secret", tok("GOC", "SPX-", body(URLSAFE, 28)), 7)
    add("openai-project", tok("sk", "-proj-", body(ALNUM, 48)), 8)
    add("openai-legacy", tok("sk", "-", body(ALNUM, 48)), 3)
    add("openai-service-account", tok("sk", "-svcacct-", body(URLSAFE, 48)), 11)
    add("anthropic", tok("sk", "-ant-api03-", body(URLSAFE, 93)), 11)
    add("hugging-face", tok("hf", "_", body(ALNUM, 34)), 3)
    add("npm", tok("np", "m_", body(ALNUM, 36)), 4)
    add("pypi", tok("pypi", "-AgEIcHlwaS5vcmc", body(URLSAFE, 70)), 16)
    add("sendgrid", tok("SG", ".", body(URLSAFE, 22), ".", body(URLSAFE, 43)), 3)
    add("mailgun", tok("ke", "y-", body(HEX, 32)), 4)
    add("mailchimp", tok(body(HEX, 32), "-us", "12"), 0)
    add("twilio-api-key", tok("S", "K", body(HEX, 32)), 2)
    add("telegram-bot", tok(body(string.digits, 9), ":AA", body(URLSAFE, 33)), 12)
    add("databricks", tok("da", "pi", body(HEX, 32)), 4)
    add("shopify-access", tok("sh", "pat_", body(HEX, 32)), 6)
    add("shopify-shared-secret", tok("sh", "pss_", body(HEX, 32)), 6)
    add("new-relic-user", tok("NR", "AK-", body(UPPER, 27)), 5)
    add("sentry-org-token", tok("sn", "trys_", body(ALNUM, 60)), 7)
    add("sentry-user-token", tok("sn", "tryu_", body(HEX, 64)), 7)
    add("posthog-personal", tok("ph", "x_", body(ALNUM, 40)), 4)
    jwt = tok("ey", "J", body(URLSAFE, 20), ".ey", "J", body(URLSAFE, 40), ".", body(URLSAFE, 43))
    add("jwt", jwt, 25)
    add("digitalocean", tok("do", "p_v1_", body(HEX, 64)), 7)
    add("linear", tok("lin", "_api_", body(ALNUM, 40)), 8)
    add("notion", tok("nt", "n_", body(ALNUM, 46)), 4)
    add("postman", tok("PM", "AK-", body(HEX, 24), "-", body(HEX, 34)), 5)
    add("brevo", tok("xkey", "sib-", body(HEX, 64), "-", body(ALNUM, 16)), 8)
    add("grafana-service-account", tok("gl", "sa_", body(ALNUM, 32), "_", body(HEX, 8)), 5)
    add("square-oauth", tok("sq0", "atp-", body(URLSAFE, 22)), 7)
    add("square-access", tok("EA", "AA", body(URLSAFE, 60)), 4)
    add("atlassian", tok("ATA", "TT3", body(URLSAFE, 180)), 6)
    add("doppler", tok("dp", ".pt.", body(ALNUM, 43)), 6)
    add("pulumi", tok("pu", "l-", body(HEX, 40)), 4)
    add("age", tok("AGE-SECRET", "-KEY-1", body(UPPER, 58)), 16)
    add("vault", tok("hv", "s.", body(URLSAFE, 90)), 4)
    add("docker-hub", tok("dckr", "_pat_", body(URLSAFE, 27)), 9)
    add("figma", tok("fi", "gd_", body(URLSAFE, 40)), 5)
    add("groq", tok("gs", "k_", body(ALNUM, 52)), 4)
    add("replicate", tok("r", "8_", body(ALNUM, 37)), 3)
    add("airtable", tok("pa", "t", body(ALNUM, 14), ".", body(HEX, 64)), 3)
    add("rubygems", tok("ruby", "gems_", body(HEX, 48)), 9)
    return t


SECRET_TOKENS = _tokens()

# -- card numbers ----------------------------------------------------------------------

_CARDS = [
    ("visa", luhn_complete("4", 16)),
    ("visa-13", luhn_complete("4", 13)),
    ("mastercard", luhn_complete("53", 16)),
    ("mastercard-2-series", luhn_complete("2221", 16)),
    ("amex", luhn_complete("37", 15)),
    ("discover", luhn_complete("6011", 16)),
    ("jcb", luhn_complete("3530", 16)),
    ("diners", luhn_complete("305", 14)),
    ("unionpay", luhn_complete("62", 16)),
]


def _grouped(number: str, separator: str) -> str:
    if len(number) == 15:
        return separator.join((number[:4], number[4:10], number[10:]))
    return separator.join(number[i : i + 4] for i in range(0, len(number), 4))


# -- secret texts ------------------------------------------------------------------------


def _password(n: int = 14) -> str:
    return "Pw" + body(ALNUM, n)


def _secret_texts() -> list[Secret]:
    s: list[Secret] = []

    def add(label: str, form: str, text: str, part: str) -> None:
        assert part in text, (label, form)
        s.append(Secret(label, form, text, part))

    # Vendor tokens, in the forms they take in logs.
    for label, value, part in SECRET_TOKENS:
        add(label, "bare", f"request failed with {value} in prose", part)
        add(label, "env", f"SOME_SETTING={value}", part)
        add(label, "json", f'{{"value": "{value}", "region": "eu"}}', part)
    for label, value, part in SECRET_TOKENS[::4]:
        add(label, "url-query", f"GET https://api.example.com/v1/items?q={value}&page=2", part)
        add(label, "yaml", f"settings:\n  upstream: {value}\n", part)
    # Cards: plain, spaced, dashed.
    for label, number in _CARDS:
        add(f"card-{label}", "bare", f"charge declined for card {number}", number)
        spaced = _grouped(number, " ")
        add(f"card-{label}", "spaced", f"card: {spaced} expired", spaced)
        add(f"card-{label}", "dashed", f"number {_grouped(number, '-')}", _grouped(number, "-"))
    # URL credentials.
    pw = _password()
    add("url-credentials", "url", f"could not connect to postgres://app:{pw}@db.internal/shop", pw)
    pw = _password()
    add("url-password-only", "url", f"redis://:{pw}@cache:6379/0 refused", pw)
    pw = _password(10)
    add("url-password-with-at", "url", f"amqp://guest:{pw}@x@rabbit:5672// timed out", pw)
    pw = body(ALNUM, 6) + "/" + body(ALNUM, 8)
    add("url-password-with-slash", "url", f"mysql://root:{pw}@db:3306/app failed", pw)
    pw = _password()
    add("url-credentials-https", "url", f"fetch https://deploy:{pw}@git.example.com/r.git", pw)
    key = body(HEX, 32)
    add("sentry-dsn", "url", f"sentry at https://{key}@o123.ingest.sentry.io/42", key)
    hook = tok("T", body(UPPER, 8), "/B", body(UPPER, 8), "/", body(ALNUM, 24))
    add("slack-webhook", "url", f"POST https://hooks.slack.com/services/{hook} failed", hook)
    hook = tok(body(URLSAFE, 68))
    add(
        "discord-webhook",
        "url",
        f"https://discord.com/api/webhooks/{body(string.digits, 18)}/{hook}",
        hook,
    )
    hook = body(HEX, 32)
    add(
        "teams-webhook",
        "url",
        f"https://contoso.webhook.office.com/webhookb2/{body(HEX, 8)}@{body(HEX, 8)}/"
        f"IncomingWebhook/{hook}/{body(HEX, 8)}",
        hook,
    )
    # Authorization header schemes.
    for scheme in ("Bearer", "Basic", "Token", "ApiKey", "Key", "Api-Key", "Digest"):
        value = body(ALNUM, 24)
        add(f"authorization-{scheme.lower()}", "header", f"Authorization: {scheme} {value}", value)
    value = str(uuid.UUID(int=_rng.getrandbits(128)))
    add("authorization-splunk", "header", f"Authorization: Splunk {value}", value)
    value = body(ALNUM, 20)
    add("authorization-bare", "header", f"authorization: {value}", value)
    value = body(ALNUM, 20)
    add("authorization-quoted", "header", f"headers={{'Authorization': 'Bearer {value}'}}", value)
    value = body(ALNUM, 5) + "7"
    add("bearer-short", "header", f"Authorization: Bearer {value}", value)
    value = body(ALNUM, 22)
    add("proxy-authorization", "header", f"Proxy-Authorization: Basic {value}", value)
    value = body(HEX, 24)
    add("token-scheme", "prose", f"got token {value} for tenant", value)
    # Cookies.
    value = body(string.ascii_lowercase + string.digits, 32)
    add("django-session", "cookie", f"Cookie: theme=dark; sessionid={value}", value)
    value = body(ALNUM, 32)
    add("django-csrf", "cookie", f"Cookie: csrftoken={value}; theme=dark", value)
    value = body(ALNUM, 26)
    add("cookie-any", "cookie", f"Cookie: theme=dark; lang=en; remember={value}", value)
    value = body(HEX, 32)
    add("set-cookie", "cookie", f"Set-Cookie: JSESSIONID={value}; Path=/; HttpOnly", value)
    value = body(HEX, 26)
    add("php-session", "cookie", f"PHPSESSID={value}", value)
    # Secret names in text, in each form.
    names = [
        "password", "passwd", "DB_PASSWORD", "SMTP_PASS", "DB_PASS", "redis_pass", "PGPASS",
        "PGPASSWORD", "sessionid", "session_token", "csrftoken", "api_key", "apiKey",
        "X-Api-Key", "client_secret", "SECRET_KEY", "aws_secret_access_key", "access_token",
        "refresh_token", "auth_token", "private_key", "passphrase", "credentials", "jwt",
        "sentry_dsn", "connection_string", "webhook_secret", "id_token", "x-auth-token",
        "password_confirm", "new_password", "oauth_token", "session_key", "secret",
        "MYSQL_ROOT_PASSWORD", "AZURE_STORAGE_CONNECTION_STRING", "db.password",
        "sessionId_secret", "Ocp-Apim-Subscription-Key", "X-CSRFToken",
    ]  # fmt: skip
    forms = [
        ("env", "{k}={v}"),
        ("json", '{{"{k}": "{v}", "retries": 3}}'),
        ("yaml", "{k}: {v}"),
        ("python-kwarg", "connect(host='db', {k}='{v}')"),
        ("xml", "<{k}>{v}</{k}>"),
        ("cli-flag", "run --{k} {v} --verbose"),
        ("cli-flag-equals", "run --{k}={v}"),
        ("pair", "[('{k}', '{v}'), ('host', 'db')]"),
        ("url-query", "https://example.com/cb?{k}={v}&page=2"),
        ("header", "{k}: {v}"),
        ("dict-repr", "{{'user': 'app', '{k}': '{v}'}}"),
        ("escaped-json", '"{{\\"{k}\\": \\"{v}\\"}}"'),
    ]
    for index, name in enumerate(names):
        form, template = forms[index % len(forms)]
        value = _password()
        add(f"key-{name}", form, template.format(k=name, v=value), value)
        form, template = forms[(index + 5) % len(forms)]
        value = _password()
        if form == "xml" and "." in name:
            form, template = forms[0]
        add(f"key-{name}", form, template.format(k=name, v=value), value)
    value = _password()
    add("ws-security", "xml", f'<wsse:Password Type="#PasswordText">{value}</wsse:Password>', value)
    value = _password()
    add("xml-password", "xml", f"<user><name>bob</name><password>{value}</password></user>", value)
    value = _password()
    add("sshpass", "cli", f"sshpass -p {value} ssh deploy@host", value)
    value = _password()
    add("sshpass-quoted", "cli", f"sshpass -p '{value}' rsync -a src/ host:dst/", value)
    value = _password()
    add("passphrase-spaces", "yaml", f'passphrase: "correct horse {value}"', value)
    value = _password()
    add("azure-sas", "url", f"https://acct.blob.core.windows.net/c/b?sv=2022&sig={value}", value)
    pem_body = body(ALNUM, 64)
    for kind in ("RSA", "EC", "OPENSSH", ""):
        label = f"pem-{kind.lower() or 'pkcs8'}"
        marker = f"{kind} PRIVATE KEY".strip()
        pem = f"-----BEGIN {marker}-----\n{pem_body}\n{body(ALNUM, 64)}\n-----END {marker}-----"
        add(label, "pem", f"bad key:\n{pem}\nend", pem_body[:24])
        pem_body = body(ALNUM, 64)
    return s


SECRET_TEXTS = _secret_texts()

# Secret keys (property, extra, variable and dict-key names): their value is filtered whole.
SECRET_KEYS: dict[str, str] = {
    name: f"plainvalue{index:03d}"
    for index, name in enumerate(
        [
            "password", "db_password", "DB_PASSWORD", "passwd", "pwd", "SMTP_PASS", "DB_PASS",
            "redis_pass", "PGPASS", "sessionid", "session_token", "session", "session_key",
            "csrftoken", "X-CSRFToken", "client_secret", "SECRET_KEY", "api_key", "apiKey",
            "X-Api-Key", "Authorization", "HTTP_AUTHORIZATION", "cookie", "Set-Cookie",
            "credentials", "sentry_dsn", "private_key", "auth_token", "refresh_token",
            "accessToken", "jwt", "conn_str", "passphrase", "password_confirm", "new_password",
            "JSESSIONID", "PHPSESSID", "aws_secret_access_key", "auth",
        ]
    )
}  # fmt: skip

# -- ordinary values -----------------------------------------------------------------------


def _ordinary_texts() -> list[Ordinary]:
    o: list[Ordinary] = []

    def add(label: str, text: str) -> None:
        o.append(Ordinary(label, text))

    for _ in range(12):
        add("uuid4", str(uuid.UUID(int=_rng.getrandbits(128), version=4)))
    for _ in range(4):
        add("uuid-upper", str(uuid.UUID(int=_rng.getrandbits(128), version=4)).upper())
    for _ in range(8):
        head = f"0190{body(HEX, 4)}-{body(HEX, 4)}"
        add("uuid7", f"{head}-7{body(HEX, 3)}-8{body(HEX, 3)}-{body(HEX, 12)}")
    for _ in range(10):
        add("git-sha", body(HEX, 40))
    for _ in range(4):
        add("git-short-sha", f"commit {body(HEX, 9)} broke the build")
    for _ in range(6):
        add("sha256", f"sha256:{body(HEX, 64)}")
    for _ in range(4):
        add("md5", body(HEX, 32))
    for _ in range(10):
        add("mixed-case-hex", body("0123456789abcdefABCDEF", 32))
    for _ in range(12):
        add("request-id-32", body(ALNUM, 32))
    for _ in range(4):
        add("request-id-prefixed", f"req_{body(ALNUM, 24)}")
    for _ in range(6):
        add("s3-object", f"{body(ALNUM, 32)}.png")
    for _ in range(6):
        add("s3-object-path", f"uploads/2024/11/{body(ALNUM, 28)}/{body(ALNUM, 12)}.pdf")
    for _ in range(4):
        add("s3-url", f"s3://my-bucket/exports/{body(ALNUM, 30)}.csv.gz")
    for _ in range(4):
        add("object-id", body(HEX, 24))
    for _ in range(4):
        add("ulid", "01" + body("0123456789ABCDEFGHJKMNPQRSTVWXYZ", 24))
    for _ in range(8):
        record = uuid.UUID(int=_rng.getrandbits(128))
        add("repr-with-uuid", f"CheckActivityInput(proxy_record_id=UUID('{record}'))")
    for _ in range(4):
        add("repr-dataclass", f"Order(id={_rng.randint(1, 10**6)}, ref='{body(ALNUM, 32)}')")
    for _ in range(4):
        add("timestamp-ms", str(_rng.randint(1_600_000_000_000, 1_800_000_000_000)))
    for _ in range(4):
        add("order-number-16", luhn_invalid("4", 16))
    for _ in range(3):
        add("phone", f"+1 415 {_rng.randint(200, 999)} {_rng.randint(1000, 9999)}")
    for _ in range(3):
        add("date", f"2024-{_rng.randint(1, 12):02d}-{_rng.randint(1, 28):02d} 12:00:00")
    add("ip", "10.0.0.1:5432")
    add("email", "alice@example.com")
    add("path-unix", "/srv/app/src/MyProject2/Views/Home12/index.py")
    add("path-windows", "C:\\Users\\app\\AppData\\Local\\Temp\\build_3f9a.log")
    add("path-site-packages", "/usr/lib/python3.11/site-packages/django/core/handlers/base.py")
    add("url", "GET https://example.com/api/v2/Orders?page=2 returned 500")
    add("url-user-only", "ssh://git@github.com/org/repo.git")
    add("url-port-path-at", "https://example.com:8443/users/@me/settings")
    add("url-query", "https://shop.example.com/search?q=blue+shoes&sort=price&page=3")
    add("url-with-id", f"https://api.example.com/v1/orders/{body(ALNUM, 32)}")
    add("stripe-object-id", f"order pi_{body(ALNUM, 24)} failed")
    add("stripe-customer-id", f"cus_{body(ALNUM, 14)}")
    add("stripe-publishable", f"pk_live_{body(ALNUM, 24)}")
    add("posthog-project-key", f"phc_{body(ALNUM, 43)}")
    add("class-name", "MyVeryLongClassNameFactoryBuilder2Impl3")
    add("test-name", "test_values_and_log_messages_are_redacted_on_the_wire_2024")
    add("dotted-path", "posthog_errors.integrations.celery.PostHogCeleryIntegration")
    add("key-error", "KeyError: 'user_id'")
    add("cache-key", "cache_key=user:42:profile")
    add("keyboard", "keyboard=qwerty")
    add("connection-error", "HTTPConnectionPool(host='api.stripe.com', port=443): Max retries")
    add("prose-token", "token expired, please sign in again")
    add("prose-token-verification", "token verification failed")
    add("prose-password", "password is required")
    add("prose-basic", "Basic Authentication required")
    add("prose-bearer", "the bearer of bad news")
    add("prose-author", "the author said so")
    add("prose-session", "session timed out after 30 minutes")
    add("prose-cookie", "cookie consent banner dismissed")
    add("prose-auth-method", "unsupported auth method: saml")
    add("prose-key", "Key not found in registry")
    add("prose-secret", "secret rotation scheduled for Monday")
    add("value-error", "ValueError: invalid literal for int() with base 10: 'abc'")
    add("bypass", "bypass=cache")
    add("token-type", "token_type=bearer")
    add("session-count", "session_count=3")
    add("password-strength", "password_strength: strong")
    add("csrf-failures", "csrf_failures: 2")
    add("oauth-provider", "oauth_provider=google")
    add("cookie-consent", "cookie_consent=granted")
    add("auth-method", "auth_method: saml")
    add("docker-image", "registry.example.com/team/api:3f9a8b7c6d5e4f3a2b1c")
    add("semver", "posthog-errors 0.1.0 on CPython 3.11.7")
    add("base64-small", "aGVsbG8gd29ybGQ=")
    add("hash-prefixed", f'etag W/"{body(HEX, 32)}"')
    add("k8s-pod", f"api-deployment-{body(HEX, 10)}-{body(string.ascii_lowercase, 5)}")
    add("trace-id", f"trace {body(HEX, 32)} span {body(HEX, 16)}")
    add("sql", "SELECT id FROM users WHERE email = %s AND deleted_at IS NULL")
    add("json-ordinary", '{"session_count": 3, "token_type": "bearer", "sessions": 12}')
    add("numbers", "processed 1234 of 5678 rows in 0.42 s")
    return o


ORDINARY_TEXTS = _ordinary_texts()

# Keys that merely contain a key word: their values must arrive as they were.
ORDINARY_KEYS: dict[str, Any] = {
    "session_count": 3,
    "session_duration_s": 12.5,
    "sessions": ["web", "ios"],
    "csrf_failures": 2,
    "password_strength": "strong",
    "password_reset_requested": "yes",
    "oauth_provider": "google",
    "auth_method": "saml",
    "token_type": "bearer",
    "cookie_consent": "granted",
    "max_tokens": 512,
    "token_count": 77,
    "tokenizer": "cl100k_base",
    "$ai_input_tokens": 1234,
    "author": "bob",
    "authority": "example.com",
    "is_authenticated": "yes",
    "session_id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
    "sessionId": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c",
    "parent_session_id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5d",
    "cache_key": "user:42:profile",
    "primary_key": 42,
    "sort_key": "created_at",
    "key": "orders",
    "keyboard_layout": "qwerty",
    "monkey": "business",
    "bypass": "cache",
    "passenger_count": 2,
    "passport_country": "FR",
    "secret_santa_group": "eng",
    "password_hash_algorithm": "argon2",
    "token_expires_at": "2025-01-01T00:00:00Z",
    "request_id": "a" + "".join(random.Random(7).choice(ALNUM) for _ in range(31)),
    "order_id": "order-1234",
    "user_id": 42,
    "credit_limit": 5000,
    "dsn_host": "db.internal",
    "api_version": "2024-06-20",
    "auth_provider_name": "okta",
    "compass_heading": 270,
}
