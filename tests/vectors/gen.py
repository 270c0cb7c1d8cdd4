#!/usr/bin/env python3
"""Independent re-derivation of the fugo v1 test vectors from docs/SPEC.md.

This script is "the spec in code": it was written from docs/SPEC.md alone,
without reading the Rust implementation, so that the Rust test suite can be
checked against a second implementation of the same text.  Each function is
named after the spec section it implements.

Primitives (SPEC.md, "Notation"):
  * AES-256 on a single 16-byte block, no mode and no padding (here: the
    `cryptography` package's AES in ECB mode applied to exactly one block);
  * HKDF-SHA256 as in RFC 5869 (here: HMAC-SHA256 for Extract and
    `cryptography`'s HKDFExpand for Expand, cross-checked against the one-shot
    HKDF at start-up).

Usage (SPEC.md §6):

    python3 tests/vectors/gen.py > tests/vectors/v1.json

The output is a JSON document that is identical byte for byte on every run
and every Python version: no clocks, no `random`; every pseudo-random choice
is taken from SHA-256 of a fixed ASCII seed.

Besides the code vectors of §3 it writes the sealed-token vectors of §7
(the "tokens" section), of token formats 1 (the window names the key) and 2
(the window and a key index), and (the "tokens3" section) of format 3 (the
master-key generation, the window and a key index; §7.4): AES-256-GCM is the
`cryptography` package's AESGCM.

Before anything is written the script asserts the known answers of SPEC.md §6
and the demo-key fingerprint; if they do not reproduce it fails loudly.
"""

import hashlib
import hmac as std_hmac
import json
import re
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as c_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization


# ---------------------------------------------------------------------------
# Notation: AES-256 on one block, HKDF-SHA256
# ---------------------------------------------------------------------------

def aes256_encrypt_block(key: bytes, block: bytes) -> bytes:
    """AES-256-Encrypt of exactly one 16-byte block (FIPS 197, no mode)."""
    assert len(key) == 32 and len(block) == 16
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    out = enc.update(block) + enc.finalize()
    assert len(out) == 16
    return out


def aes256_decrypt_block(key: bytes, block: bytes) -> bytes:
    """AES-256-Decrypt of exactly one 16-byte block (FIPS 197, no mode)."""
    assert len(key) == 32 and len(block) == 16
    dec = Cipher(algorithms.AES(key), modes.ECB()).decryptor()
    out = dec.update(block) + dec.finalize()
    assert len(out) == 16
    return out


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """RFC 5869 §2.2: PRK = HMAC-SHA256(salt, IKM)."""
    h = c_hmac.HMAC(salt, hashes.SHA256())
    h.update(ikm)
    return h.finalize()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 §2.3: HKDF-Expand(PRK, info, L) with SHA-256."""
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(prk)


# ---------------------------------------------------------------------------
# §1.1 My Number and its check digit
# ---------------------------------------------------------------------------

# Read left to right, the weights of digits 1-11 (§1.1).
CHECK_DIGIT_WEIGHTS_LEFT_TO_RIGHT = (6, 5, 4, 3, 2, 7, 6, 5, 4, 3, 2)


def check_digit(first_eleven: str) -> int:
    """§1.1: check digit of the first eleven digits of a My Number.

    P_1 is the 11th digit (next to the check digit), P_11 the first digit;
    Q_n = n + 1 for 1 <= n <= 6 and Q_n = n - 5 for 7 <= n <= 11.
    """
    assert len(first_eleven) == 11 and all(ch in "0123456789" for ch in first_eleven)
    total = 0
    for n in range(1, 12):
        p_n = int(first_eleven[11 - n])          # numbered from the right
        q_n = n + 1 if n <= 6 else n - 5
        total += p_n * q_n
    remainder = total % 11
    return 0 if remainder <= 1 else 11 - remainder


def check_digit_by_table(first_eleven: str) -> int:
    """§1.1, second phrasing: left-to-right weights 6 5 4 3 2 7 6 5 4 3 2."""
    total = sum(int(d) * w for d, w in zip(first_eleven, CHECK_DIGIT_WEIGHTS_LEFT_TO_RIGHT))
    remainder = total % 11
    return 0 if remainder <= 1 else 11 - remainder


class MyNumberError(Exception):
    """§1.1 parse failure; `kind` in the order they are checked."""

    def __init__(self, kind: str, position: int | None = None):
        super().__init__(kind if position is None else f"{kind} at {position}")
        self.kind = kind
        self.position = position


def parse_my_number(text: str) -> int:
    """§1.1 strict parsing: empty; non-digit byte (1-based); not 12; check digit."""
    raw = text.encode("utf-8")
    if not raw:
        raise MyNumberError("empty")
    for i, b in enumerate(raw, start=1):
        if not (0x30 <= b <= 0x39):
            raise MyNumberError("non_digit", i)
    if len(raw) != 12:
        raise MyNumberError("wrong_length")
    digits = raw.decode("ascii")
    if check_digit(digits[:11]) != int(digits[11]):
        raise MyNumberError("bad_check_digit")
    return int(digits)


def is_valid_my_number(n: int) -> bool:
    """A number below 10^12 whose 12 digits (leading zeros) carry a valid check digit."""
    if not (0 <= n < 10**12):
        return False
    digits = f"{n:012d}"
    return check_digit(digits[:11]) == int(digits[11])


def make_my_number(first_eleven: str) -> str:
    """Append the §1.1 check digit to eleven digits."""
    return first_eleven + str(check_digit(first_eleven))


# ---------------------------------------------------------------------------
# §1.2 Agency id and epoch
# ---------------------------------------------------------------------------

AGENCY_ID_RE = re.compile(rb"[a-z0-9][a-z0-9._-]{0,62}")


def check_agency(agency: str) -> bytes:
    """§1.2: `[a-z0-9][a-z0-9._-]{0,62}`, used byte for byte."""
    raw = agency.encode("ascii")
    assert AGENCY_ID_RE.fullmatch(raw), f"invalid agency id {agency!r}"
    assert b"/" not in raw
    return raw


def check_epoch(epoch: int) -> int:
    """§1.2: 1 <= e <= 31."""
    assert isinstance(epoch, int) and 1 <= epoch <= 31, f"invalid epoch {epoch!r}"
    return epoch


# ---------------------------------------------------------------------------
# §2 Keys
# ---------------------------------------------------------------------------

HKDF_SALT = b"fugo/v1"


class Keys:
    """§2: PRK, K_person, K_agency(a, e) and KCV of one master key."""

    def __init__(self, master_key: bytes):
        assert len(master_key) == 32
        self.master_key = master_key
        # PRK = HKDF-Extract(salt = `fugo/v1`, IKM = master key)
        self.prk = hkdf_extract(HKDF_SALT, master_key)
        # K_person = HKDF-Expand(PRK, info = `fugo/v1/person`, L = 32)
        self.k_person = hkdf_expand(self.prk, b"fugo/v1/person", 32)
        # KCV = HKDF-Expand(PRK, info = `fugo/v1/kcv`, L = 16)
        self.kcv = hkdf_expand(self.prk, b"fugo/v1/kcv", 16)

    def k_agency(self, agency: str, epoch: int) -> bytes:
        """K_agency(a, e) = HKDF-Expand(PRK, `fugo/v1/agency/` ‖ a ‖ `/` ‖ decimal(e), 32)."""
        info = b"fugo/v1/agency/" + check_agency(agency) + b"/" + str(check_epoch(epoch)).encode("ascii")
        return hkdf_expand(self.prk, info, 32)

    def fingerprint(self) -> str:
        """§2 Fingerprint: the 16 KCV bytes as 32 lowercase hex characters."""
        return self.kcv.hex()

    def k_link(self) -> bytes:
        """§8: K_link = HKDF-Expand(PRK, `fugo/v1/audit/link`, 32)."""
        return hkdf_expand(self.prk, b"fugo/v1/audit/link", 32)

    def log_seed(self) -> bytes:
        """§8: the log's Ed25519 seed = HKDF-Expand(PRK, `fugo/v1/audit/log-signing`, 32)."""
        return hkdf_expand(self.prk, b"fugo/v1/audit/log-signing", 32)


# ---------------------------------------------------------------------------
# §3.1 Derivation
# ---------------------------------------------------------------------------

PERSON_LABEL = b"fugo-pn1"


def person_block(number: int) -> bytes:
    """§3.1: B = uint64_be(number) ‖ `fugo-pn1`, 16 bytes; number < 10^12."""
    assert 0 <= number < 10**12
    return number.to_bytes(8, "big") + PERSON_LABEL


def person_handle(keys: Keys, number: int) -> bytes:
    """§3.1: h = AES-256-Encrypt(K_person, B)."""
    return aes256_encrypt_block(keys.k_person, person_block(number))


def derive(keys: Keys, number: int, agency: str, epoch: int) -> tuple[bytes, bytes]:
    """§3.1: returns (h, c) with c = AES-256-Encrypt(K_agency(a, e), h)."""
    h = person_handle(keys, number)
    c = aes256_encrypt_block(keys.k_agency(agency, epoch), h)
    return h, c


# ---------------------------------------------------------------------------
# §3.2 Text form
# ---------------------------------------------------------------------------

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"   # Crockford base32; value = index
assert len(ALPHABET) == 32 and len(set(ALPHABET)) == 32
VERSION = 1
TEXT_SYMBOLS = 29


def luhn_check_value(values_1_to_28: list[int]) -> int:
    """§3.2 Check symbol: Luhn mod 32 over the values of symbols 1-28.

    Start at symbol 28 and move left, multiplying alternately by 2 and 1
    (symbol 28 by 2, symbol 27 by 1, ...); for each product p add
    p div 32 + p mod 32; the check value k satisfies (sum + k) mod 32 = 0.
    """
    assert len(values_1_to_28) == 28
    total = 0
    for i, v in enumerate(reversed(values_1_to_28)):
        p = v * (2 if i % 2 == 0 else 1)
        total += p // 32 + p % 32
    return (-total) % 32


def luhn_sum(values_1_to_29: list[int]) -> int:
    """§3.2 "Equivalently": the same sum over all 29 symbols, symbol 29 x1, 28 x2, ..."""
    assert len(values_1_to_29) == 29
    total = 0
    for i, v in enumerate(reversed(values_1_to_29)):
        p = v * (1 if i % 2 == 0 else 2)
        total += p // 32 + p % 32
    return total


def encode_text_values(version: int, epoch_value: int, c: bytes, padding: int = 0) -> list[int]:
    """§3.2 symbol values 1-29; `version`, `epoch_value`, `padding` are raw
    so that negative vectors can build texts the spec forbids (with a correct
    check symbol)."""
    assert len(c) == 16 and 0 <= version < 32 and 0 <= epoch_value < 32 and 0 <= padding < 4
    # Symbols 3-28: the 128 bits of c, most significant first, then two
    # (normally zero) padding bits: 130 bits = 26 x 5.
    bits = (int.from_bytes(c, "big") << 2) | padding
    body = [(bits >> (5 * k)) & 31 for k in range(25, -1, -1)]
    values = [version, epoch_value] + body
    values.append(luhn_check_value(values))
    assert len(values) == TEXT_SYMBOLS
    return values


def values_to_text(values: list[int]) -> str:
    return "".join(ALPHABET[v] for v in values)


def encode_text(epoch: int, c: bytes) -> str:
    """§3.2: the canonical 29-symbol text of code bytes c at epoch e."""
    return values_to_text(encode_text_values(VERSION, check_epoch(epoch), c))


def with_check_symbol(text_1_to_28: str) -> str:
    """Append the correct §3.2 check symbol to 28 canonical symbols."""
    values = [ALPHABET.index(ch) for ch in text_1_to_28]
    return text_1_to_28 + ALPHABET[luhn_check_value(values)]


# ---------------------------------------------------------------------------
# §3.3 Reading a text
# ---------------------------------------------------------------------------

# The error kinds of §3.3 in the order they are checked, then §3.4.
ERROR_KINDS = (
    "invalid_character",     # §3.3 step 1
    "wrong_length",          # §3.3 step 2
    "bad_check_character",   # §3.3 step 3
    "unknown_version",       # §3.3 step 4
    "epoch_zero",            # §3.3 step 5
    "non_zero_padding",      # §3.3 step 6
    "unknown_code",          # §3.4 (every failure, one opaque error)
)


class CodeError(Exception):
    def __init__(self, kind: str, position: int | None = None):
        assert kind in ERROR_KINDS
        super().__init__(kind if position is None else f"{kind} at byte {position}")
        self.kind = kind
        self.position = position


def read_symbol(byte: int) -> int | None:
    """§3.3 step 1: one byte to a symbol value, case-insensitively, with the
    aliases I/i/L/l -> 1 and O/o -> 0; None for anything else."""
    if byte >= 0x80:
        return None                        # non-ASCII: invalid
    ch = chr(byte).upper()
    if ch in ("I", "L"):
        return 1
    if ch == "O":
        return 0
    idx = ALPHABET.find(ch)
    return idx if idx >= 0 and len(ch) == 1 else None


def decode_text(text: str) -> tuple[int, bytes]:
    """§3.3: read a text, returning (epoch e', code bytes c) or raising
    CodeError with the first failing check in the order of §3.3."""
    raw = text.encode("utf-8")
    # Step 1: map bytes; `-` anywhere is skipped and not counted; any other
    # byte is an invalid character, reported with its 1-based byte position
    # in the input (hyphens included).
    values = []
    for pos, b in enumerate(raw, start=1):
        if b == ord("-"):
            continue
        v = read_symbol(b)
        if v is None:
            raise CodeError("invalid_character", pos)
        values.append(v)
    # Step 2: exactly 29 symbols.
    if len(values) != TEXT_SYMBOLS:
        raise CodeError("wrong_length")
    # Step 3: the Luhn sum over all 29 symbols is 0 mod 32.
    if luhn_sum(values) % 32 != 0:
        raise CodeError("bad_check_character")
    # Step 4: symbol 1 is `1`.
    if values[0] != VERSION:
        raise CodeError("unknown_version")
    # Step 5: symbol 2 is not `0`.
    if values[1] == 0:
        raise CodeError("epoch_zero")
    # Step 6: the two low bits of symbol 28 are zero.
    if values[27] & 3 != 0:
        raise CodeError("non_zero_padding")
    bits = 0
    for v in values[2:28]:
        bits = (bits << 5) | v
    c = (bits >> 2).to_bytes(16, "big")
    return values[1], c


# ---------------------------------------------------------------------------
# §3.4 Opening a code
# ---------------------------------------------------------------------------

def open_code(keys: Keys, text: str, agency: str, epoch: int) -> tuple[int, bytes]:
    """§3.3 then §3.4: returns (number, handle h) or raises CodeError.

    Every failure of §3.4 steps 1-4 is the one opaque `unknown_code`.
    """
    text_epoch, c = decode_text(text)
    # Step 1: the text's epoch e' must equal the agency's current epoch e.
    if text_epoch != epoch:
        raise CodeError("unknown_code")
    # Step 2: h = AES-256-Decrypt(K_agency(a, e), c).
    h = aes256_decrypt_block(keys.k_agency(agency, epoch), c)
    # Step 3: B = AES-256-Decrypt(K_person, h).
    b = aes256_decrypt_block(keys.k_person, h)
    # Step 4: label, range, check digit.
    if not std_hmac.compare_digest(b[8:], PERSON_LABEL):
        raise CodeError("unknown_code")
    n = int.from_bytes(b[:8], "big")
    if not is_valid_my_number(n):
        raise CodeError("unknown_code")
    return n, h


def error_of(keys: Keys, text: str, agency: str, epoch: int) -> str | None:
    """The error kind reading then opening gives, or None if it opens."""
    try:
        open_code(keys, text, agency, epoch)
    except CodeError as e:
        return e.kind
    return None


# ---------------------------------------------------------------------------
# Deterministic pseudo-randomness: SHA-256 of fixed ASCII seeds
# ---------------------------------------------------------------------------

def seeded(seed: str) -> bytes:
    return hashlib.sha256(b"fugo-vectors/" + seed.encode("ascii")).digest()


def seeded_number(seed: str) -> str:
    """11 digits from SHA-256 of the seed, then the §1.1 check digit."""
    first_eleven = f"{int.from_bytes(seeded(seed), 'big') % 10**11:011d}"
    return make_my_number(first_eleven)


# ---------------------------------------------------------------------------
# Keys of the vectors
# ---------------------------------------------------------------------------

DEMO_MASTER_KEY = bytes(range(32))                               # 00 01 02 ... 1f
SECOND_MASTER_KEY = hashlib.sha256(b"fugo-vectors/second-key").digest()
KEYS = {"demo": Keys(DEMO_MASTER_KEY), "second": Keys(SECOND_MASTER_KEY)}

DEMO_FINGERPRINT = "34391a36deac07213d13a6753154bf16"            # §2
SEAL_KNOWN_ANSWER = "df3302b54de3cbf02cb8f11e4375664e9c861e95cab62b9236d7adb6bb70af16"  # §7.1, nta, 20000
SEAL2_KNOWN_ANSWER = "776635d232c9e51c792fcddccfec07bd8b56c0642682771c5ebcb3767ad6020a"  # §7.1, nta, 20000, index 7

# §6 known answers: (number, agency, epoch, handle, code bytes, text).
KNOWN_ANSWERS = [
    ("123456789018", "city-shinjuku", 1,
     "0d8e52e5bddadf52c3a087c3bf4bbe31", "3e6effb56bf081e59c07b1858687087c",
     "117SQFZDBBY20YB707P62RD1R8FGJ"),
    ("123456789018", "city-shinjuku", 2, None, None, "12XBAM2BN7FFKZQYD4NE3BRVRV3WE"),
    ("123456789018", "nta", 1, None, None, "11WPJX8SR72WCXSC8N0V7TA3H5WMX"),
    ("983205673214", "pref-13-welfare", 31, None, None, "1ZT3JBHBCCKF68R5FZ81PFJ35Z6CY"),
]


# ---------------------------------------------------------------------------
# Self-check: fail loudly unless the spec's own numbers reproduce
# ---------------------------------------------------------------------------

def require(condition: bool, message: str = "SPEC.md self-check failed") -> None:
    """Like assert, but not removed by `python3 -O`: the self-check must fail loudly."""
    if not condition:
        raise AssertionError(message)


def self_check() -> None:
    # §1.1 examples and the equivalence of the two phrasings of the weights.
    require(parse_my_number("123456789018") == 123456789018)
    require(parse_my_number("983205673214") == 983205673214)
    try:
        parse_my_number("123456789012")
        raise AssertionError("123456789012 must be rejected (§1.1)")
    except MyNumberError as e:
        require(e.kind == "bad_check_digit")
    for i in range(200):
        eleven = seeded_number(f"self-check/weights/{i}")[:11]
        require(check_digit(eleven) == check_digit_by_table(eleven))

    # HKDF: the two-step Extract/Expand equals the one-shot RFC 5869 HKDF.
    one_shot = HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT,
                    info=b"fugo/v1/person").derive(DEMO_MASTER_KEY)
    require(one_shot == KEYS["demo"].k_person)

    # §2: demo key fingerprint.
    fp = KEYS["demo"].fingerprint()
    require(fp == DEMO_FINGERPRINT, f"demo fingerprint {fp} != {DEMO_FINGERPRINT} (SPEC.md §2)")

    # §6: known answers.
    for number, agency, epoch, handle, code_bytes, text in KNOWN_ANSWERS:
        n = parse_my_number(number)
        h, c = derive(KEYS["demo"], n, agency, epoch)
        if handle is not None:
            require(h.hex() == handle, f"§6 handle of {number}/{agency}/{epoch}: {h.hex()} != {handle}")
        if code_bytes is not None:
            require(c.hex() == code_bytes, f"§6 code of {number}/{agency}/{epoch}: {c.hex()} != {code_bytes}")
        got = encode_text(epoch, c)
        require(got == text, f"§6 text of {number}/{agency}/{epoch}: {got} != {text}")
        require(open_code(KEYS["demo"], text, agency, epoch) == (n, h))

    # §7.1: the K_seal and header known answer.
    seal = k_seal(KEYS["demo"], "nta", 20000).hex()
    require(seal == SEAL_KNOWN_ANSWER, f"§7.1 K_seal(nta, 20000) {seal} != {SEAL_KNOWN_ANSWER}")
    require(token_header("nta", 20000).hex() == "0100004e20036e7461", "§7.1 header of nta, 20000")
    seal2 = k_seal(KEYS["demo"], "nta", 20000, 7).hex()
    require(seal2 == SEAL2_KNOWN_ANSWER, f"§7.1 K_seal(nta, 20000, 7) {seal2} != {SEAL2_KNOWN_ANSWER}")
    require(token_header("nta", 20000, 7).hex() == "0200004e2000000007036e7461",
            "§7.1 header of nta, 20000, index 7")

    # §3.2: the two phrasings of the check symbol agree.
    for i in range(200):
        d = seeded(f"self-check/luhn/{i}")
        values = [b % 32 for b in d[:28]]
        k = luhn_check_value(values)
        require(luhn_sum(values + [k]) % 32 == 0)
        require(all(luhn_sum(values + [j]) % 32 != 0 for j in range(32) if j != k))


# ---------------------------------------------------------------------------
# Positive vectors
# ---------------------------------------------------------------------------

AGENCIES = ["city-shinjuku", "nta", "pref-13-welfare", "mhlw", "jps.pension",
            "moj_family-register", "0", "a" * 63]
EPOCHS = [1, 2, 31, 3, 16, 30, 7]     # length 7, coprime to len(AGENCIES)


def positive_vector(key: str, number: str, agency: str, epoch: int) -> dict:
    keys = KEYS[key]
    n = parse_my_number(number)
    h, c = derive(keys, n, agency, epoch)
    text = encode_text(epoch, c)
    # Round trip (§3.3, §3.4): the text reads and opens back to the number.
    assert open_code(keys, text, agency, epoch) == (n, h)
    assert len(text) == TEXT_SYMBOLS
    return {"key": key, "number": number, "agency": agency, "epoch": epoch,
            "handle": h.hex(), "code_bytes": c.hex(), "text": text}


def largest_valid_number() -> str:
    """The largest valid My Number below 10^12 (999999999998 if it is valid)."""
    if is_valid_my_number(999999999998):
        return "999999999998"
    n = 10**12 - 1
    while not is_valid_my_number(n):
        n -= 1
    return f"{n:012d}"


def positive_vectors() -> list[dict]:
    out = []
    # The four known answers of §6, first and in order.
    for number, agency, epoch, _h, _c, _t in KNOWN_ANSWERS:
        out.append(positive_vector("demo", number, agency, epoch))

    # Edge numbers.
    assert is_valid_my_number(0)                       # 000000000000: check digit 0
    out.append(positive_vector("demo", "000000000000", "city-shinjuku", 1))
    out.append(positive_vector("second", "000000000000", "city-shinjuku", 1))
    out.append(positive_vector("demo", largest_valid_number(), "nta", 1))
    out.append(positive_vector("second", largest_valid_number(), "a" * 63, 31))
    # Small numbers: 000000000019 (remainder 2 -> 9), 000000000027,
    # 000000000060 (remainder 1 -> check digit 0), 000000000108.
    for number, agency, epoch in [("000000000019", "0", 1),
                                  ("000000000027", "mhlw", 2),
                                  ("000000000060", "jps.pension", 31),
                                  ("000000000108", "moj_family-register", 1)]:
        assert is_valid_my_number(int(number)), number
        out.append(positive_vector("demo", number, agency, epoch))
    # The second §1.1 example under the second key and other contexts.
    out.append(positive_vector("second", "983205673214", "pref-13-welfare", 31))
    out.append(positive_vector("second", "123456789018", "city-shinjuku", 1))
    out.append(positive_vector("demo", "983205673214", "0", 2))

    # Pseudo-random valid numbers spread over agencies, epochs and keys.
    for i in range(32):
        number = seeded_number(f"number/{i}")
        agency = AGENCIES[i % len(AGENCIES)]
        epoch = EPOCHS[i % len(EPOCHS)]
        key = "second" if i % 5 == 4 else "demo"
        out.append(positive_vector(key, number, agency, epoch))
    return out


# ---------------------------------------------------------------------------
# Negative vectors
# ---------------------------------------------------------------------------

def negative_vectors() -> list[dict]:
    demo = KEYS["demo"]
    out = []

    def neg(description: str, text: str, expected: str | None,
            key: str = "demo", agency: str = "city-shinjuku", epoch: int = 1) -> None:
        got = error_of(KEYS[key], text, agency, epoch)
        assert got is not None, f"negative vector opens: {description}: {text!r}"
        if expected is not None:
            assert got == expected, f"{description}: expected {expected}, got {got}"
        out.append({"description": description, "key": key, "agency": agency,
                    "epoch": epoch, "text": text, "error": got})

    def replace(text: str, index0: int, ch: str) -> str:
        return text[:index0] + ch + text[index0 + 1:]

    # T: the first known answer (demo, city-shinjuku, epoch 1).
    T = KNOWN_ANSWERS[0][5]
    _, c_T = derive(demo, 123456789018, "city-shinjuku", 1)
    T_nta = KNOWN_ANSWERS[2][5]
    T_e2 = KNOWN_ANSWERS[1][5]

    # --- §3.3 step 1: invalid character -------------------------------
    neg("'U' is not in the alphabet (symbol 5 replaced by U)", replace(T, 4, "U"), "invalid_character")
    neg("lowercase 'u' is not in the alphabet either", replace(T, 4, "u"), "invalid_character")
    neg("a space inside the text", T[:5] + " " + T[5:], "invalid_character")
    neg("a trailing space", T + " ", "invalid_character")
    neg("a leading space", " " + T, "invalid_character")
    neg("a trailing newline", T + "\n", "invalid_character")
    neg("full-width digit one (U+FF11) as symbol 1 (non-ASCII)", "\uff11" + T[1:], "invalid_character")
    neg("'*' in place of symbol 12", replace(T, 11, "*"), "invalid_character")
    neg("'_' as a separator (only '-' is skipped)", T[:4] + "_" + T[4:], "invalid_character")
    neg("invalid character wins over wrong length (28 symbols plus '*')", T[:28] + "*", "invalid_character")
    neg("invalid character wins over wrong length (long text with '=' at the end)", T + T + "=", "invalid_character")

    # --- §3.3 step 2: wrong length --------------------------------------
    neg("28 symbols (check symbol dropped)", T[:28], "wrong_length")
    neg("30 symbols (a '0' appended)", T + "0", "wrong_length")
    neg("empty text (0 symbols)", "", "wrong_length")
    neg("only hyphens (0 symbols: '-' is not counted)", "-----", "wrong_length")
    neg("29 characters but one is '-', so 28 symbols", T[:14] + "-" + T[14:28], "wrong_length")
    neg("a text of the right length written twice (58 symbols)", T + "-" + T, "wrong_length")

    # --- §3.3 step 3: bad check character -------------------------------
    neg("one symbol changed (symbol 10)",
        replace(T, 9, ALPHABET[(ALPHABET.index(T[9]) + 1) % 32]), "bad_check_character")
    neg("check symbol changed (symbol 29)",
        replace(T, 28, ALPHABET[(ALPHABET.index(T[28]) + 7) % 32]), "bad_check_character")
    # Symbols 4 and 5 of T ('S', 'Q') are neither 0 nor Z: the swap is seen.
    assert {T[3], T[4]} & {"0", "Z"} == set() and T[3] != T[4]
    neg("adjacent symbols 4 and 5 transposed", T[:3] + T[4] + T[3] + T[5:], "bad_check_character")
    neg("version symbol changed to 2 without recomputing the check symbol",
        replace(T, 0, "2"), "bad_check_character")

    # --- §3.3 step 4: unknown version -----------------------------------
    neg("version 2 with a correct check symbol", values_to_text(encode_text_values(2, 1, c_T)), "unknown_version")
    neg("version 0 with a correct check symbol", values_to_text(encode_text_values(0, 1, c_T)), "unknown_version")
    neg("version 2 and epoch 0 with a correct check symbol: version is checked first",
        values_to_text(encode_text_values(2, 0, c_T)), "unknown_version")

    # --- §3.3 step 5: epoch zero ----------------------------------------
    neg("epoch symbol 0 with a correct check symbol", values_to_text(encode_text_values(1, 0, c_T)), "epoch_zero")
    neg("epoch 0 and non-zero padding with a correct check symbol: epoch is checked first",
        values_to_text(encode_text_values(1, 0, c_T, padding=3)), "epoch_zero")

    # --- §3.3 step 6: non-zero padding ----------------------------------
    for pad in (1, 2, 3):
        neg(f"padding bits of symbol 28 = {pad:02b} with a correct check symbol",
            values_to_text(encode_text_values(1, 1, c_T, padding=pad)), "non_zero_padding")

    # --- §3.4: unknown code ---------------------------------------------
    neg("code of nta (epoch 1) opened as city-shinjuku", T_nta, "unknown_code",
        agency="city-shinjuku", epoch=1)
    neg("code of city-shinjuku (epoch 1) opened as nta", T, "unknown_code", agency="nta", epoch=1)
    neg("code of epoch 1 opened in an epoch 2 context (text's epoch symbol is 1, context epoch is 2)",
        T, "unknown_code", agency="city-shinjuku", epoch=2)
    neg("code of epoch 2 opened in an epoch 1 context", T_e2, "unknown_code", agency="city-shinjuku", epoch=1)
    # The code bytes of epoch 1 relabelled as epoch 2 in the text: step 1
    # passes, step 2 decrypts under K_agency(a, 2) and the label check fails.
    neg("code bytes of epoch 1 written with epoch symbol 2, opened in an epoch 2 context",
        encode_text(2, c_T), "unknown_code", agency="city-shinjuku", epoch=2)
    neg("demo-key code opened under the second key", T, "unknown_code", key="second")
    second_text = positive_vector("second", "123456789018", "city-shinjuku", 1)["text"]
    neg("second-key code opened under the demo key", second_text, "unknown_code", key="demo")
    neg("well-formed text whose c is 16 pseudo-random bytes (decrypts to garbage)",
        encode_text(1, seeded("garbage-c")[:16]), "unknown_code")
    neg("well-formed text whose c is 16 zero bytes", encode_text(1, bytes(16)), "unknown_code")
    neg("well-formed text whose c is 16 0xff bytes", encode_text(1, b"\xff" * 16), "unknown_code")
    neg("lowercase, hyphenated, with aliases (l for 1, o for 0), but the wrong agency",
        "-".join(T[i:i + 5] for i in range(0, 29, 5)).lower().replace("1", "l").replace("0", "o"),
        "unknown_code", agency="nta")

    # Blocks with a correct label but a number the range/check digit refuses
    # (§3.4 step 4), encrypted under the real keys so only step 4 can fail.
    def forged(block: bytes) -> str:
        h = aes256_encrypt_block(demo.k_person, block)
        c = aes256_encrypt_block(demo.k_agency("city-shinjuku", 1), h)
        return encode_text(1, c)

    neg("correct label but number 10^12 (out of range)",
        forged((10**12).to_bytes(8, "big") + PERSON_LABEL), "unknown_code")
    neg("correct label but number 2^64-1 (out of range)",
        forged(b"\xff" * 8 + PERSON_LABEL), "unknown_code")
    neg("correct label but number 123456789012 (wrong check digit)",
        forged((123456789012).to_bytes(8, "big") + PERSON_LABEL), "unknown_code")
    neg("valid number 123456789018 but label 'fugo-pn2'",
        forged((123456789018).to_bytes(8, "big") + b"fugo-pn2"), "unknown_code")

    # A 0<->Z adjacent swap is invisible to Luhn mod 32 (§4), so the text
    # passes the check symbol and a later check must refuse it.  Search
    # seeded numbers for a code with 0 and Z at symbols (j+1, j+2).
    def find_swap(tag: str, epoch: int, positions: range, want: tuple[str, str] | None):
        for i in range(100000):
            number = seeded_number(f"swap/{tag}/{i}")
            _, c = derive(demo, int(number), "city-shinjuku", epoch)
            text = encode_text(epoch, c)
            for j in positions:
                pair = (text[j], text[j + 1])
                if (pair == want) if want else (set(pair) == {"0", "Z"}):
                    swapped = text[:j] + text[j + 1] + text[j] + text[j + 2:]
                    assert luhn_sum([ALPHABET.index(ch) for ch in swapped]) % 32 == 0
                    return number, j, swapped
        raise AssertionError(f"no 0/Z pair found for {tag}")

    # Inside symbols 3-27: the text reads, opening refuses it.
    number, j, swapped = find_swap("body", 1, range(2, 26), None)
    decode_text(swapped)
    neg(f"code of {number} with symbols {j + 1} and {j + 2} (0 and Z) swapped: "
        "passes the check symbol, fails opening", swapped, "unknown_code")
    # Symbols 2-3 of an epoch-31 code `1Z0...`: the swap makes the epoch 0.
    number, j, swapped = find_swap("epoch", 31, range(1, 2), ("Z", "0"))
    neg(f"epoch-31 code of {number} with symbols 2 and 3 (Z and 0) swapped: "
        "passes the check symbol, epoch becomes 0", swapped, "epoch_zero", epoch=31)
    # Symbols 28-29 `...0Z`: the swap puts Z (low bits 11) at symbol 28.
    number, j, swapped = find_swap("padding", 1, range(27, 28), ("0", "Z"))
    neg(f"code of {number} with symbols 28 and 29 (0 and Z) swapped: "
        "passes the check symbol, padding becomes 11", swapped, "non_zero_padding")

    # --- pseudo-random 29-symbol strings over the alphabet --------------
    for i in range(10):
        d = seeded(f"random-text/{i}")
        text = "".join(ALPHABET[b % 32] for b in d[:29])
        neg(f"pseudo-random 29-symbol string #{i}", text, None)
    return out


# ---------------------------------------------------------------------------
# §7 Sealed tokens
# ---------------------------------------------------------------------------

FORMAT_WINDOW = 0x01                   # §7.1 format 1: the window names the key
FORMAT_INDEXED = 0x02                  # §7.1 format 2: the window and a key index
FORMAT_GENERATIONAL = 0x03             # §7.4 format 3: generation, window and key index
GENERATION_MAX = 2**16 - 1             # the generation is a uint16 in the header, 0 is none
TOKEN_AAD_LABEL = b"fugo/v1/token"
NONCE_LEN = 12
TAG_LEN = 16
MAX_ITEMS = 64
WINDOW_MAX = 2**32 - 1                 # the window is a uint32 in the header
INDEX_MAX = 2**32 - 1                  # so is the key index (format 2)
ID_RE = AGENCY_ID_RE                    # §7: every id has the §1.2 syntax


def check_id(name: str) -> bytes:
    """§7 ids (addressee, requester, affair, items): the §1.2 syntax."""
    raw = name.encode("ascii")
    assert ID_RE.fullmatch(raw), f"invalid id {name!r}"
    return raw


def k_seal(keys: Keys, addressee: str, window: int, index: int | None = None) -> bytes:
    """§7: format 1 (index None): K_seal(b, w) = HKDF-Expand(PRK, `fugo/v1/seal/` ‖ b ‖ `/` ‖ decimal(w), 32);
    format 2: K_seal(b, w, k) = HKDF-Expand(PRK, `fugo/v1/seal/` ‖ b ‖ `/` ‖ decimal(w) ‖ `/` ‖ decimal(k), 32)."""
    assert 0 <= window <= WINDOW_MAX
    info = b"fugo/v1/seal/" + check_id(addressee) + b"/" + str(window).encode("ascii")
    if index is not None:
        assert 0 <= index <= INDEX_MAX
        info += b"/" + str(index).encode("ascii")
    return hkdf_expand(keys.prk, info, 32)


def short_string(raw: bytes) -> bytes:
    """§7: str(x) = uint8(len(x)) ‖ x."""
    assert len(raw) <= 255
    return bytes([len(raw)]) + raw


def token_header(addressee: str, window: int, index: int | None = None,
                 generation: int | None = None) -> bytes:
    """§7: format 1 (index None): header = 0x01 ‖ uint32_be(w) ‖ uint8(len(b)) ‖ b;
    format 2: header = 0x02 ‖ uint32_be(w) ‖ uint32_be(k) ‖ uint8(len(b)) ‖ b;
    §7.4 format 3 (generation given): header = 0x03 ‖ uint16_be(g) ‖ uint32_be(w) ‖ uint32_be(k) ‖ uint8(len(b)) ‖ b."""
    assert 0 <= window <= WINDOW_MAX
    if generation is not None:
        assert 1 <= generation <= GENERATION_MAX and index is not None and 0 <= index <= INDEX_MAX
        return (bytes([FORMAT_GENERATIONAL]) + generation.to_bytes(2, "big") + window.to_bytes(4, "big")
                + index.to_bytes(4, "big") + short_string(check_id(addressee)))
    if index is None:
        return bytes([FORMAT_WINDOW]) + window.to_bytes(4, "big") + short_string(check_id(addressee))
    assert 0 <= index <= INDEX_MAX
    return (bytes([FORMAT_INDEXED]) + window.to_bytes(4, "big") + index.to_bytes(4, "big")
            + short_string(check_id(addressee)))


def token_claims(h: bytes, serial: bytes, requester: str, affair: str, items: list[str],
                 expires_at: int, non_disclosure_until: int | None) -> bytes:
    """§7: claims = h ‖ serial ‖ uint64_be(expires_at) ‖ uint64_be(non_disclosure_until, 0 = none)
    ‖ str(requester) ‖ str(affair) ‖ uint8(n) ‖ str(item_1) … str(item_n)."""
    assert len(h) == 16 and len(serial) == 16 and 0 <= len(items) <= MAX_ITEMS
    assert non_disclosure_until is None or 0 < non_disclosure_until < 2**64
    out = h + serial + expires_at.to_bytes(8, "big") + (non_disclosure_until or 0).to_bytes(8, "big")
    out += short_string(check_id(requester)) + short_string(check_id(affair))
    out += bytes([len(items)]) + b"".join(short_string(check_id(item)) for item in items)
    return out


def seal_raw(key: bytes, header: bytes, nonce: bytes, claims: bytes) -> bytes:
    """§7: token = header ‖ nonce ‖ AES-256-GCM(K_seal, nonce, claims, AAD), AAD = `fugo/v1/token` ‖ header.

    `claims` is taken as bytes so that negative vectors can seal authentic
    plaintexts that §7.2 refuses."""
    assert len(nonce) == NONCE_LEN
    sealed = AESGCM(key).encrypt(nonce, claims, TOKEN_AAD_LABEL + header)
    assert len(sealed) == len(claims) + TAG_LEN
    return header + nonce + sealed


class TokenError(Exception):
    """§7.2 refusals, named as in the Rust `TokenError`."""

    KINDS = ("Malformed", "UnknownFormat", "WrongAddressee", "WrongWindow", "Forged")

    def __init__(self, kind: str):
        assert kind in self.KINDS
        super().__init__(kind)
        self.kind = kind


def peek_header(token: bytes) -> tuple[int, int | None, bytes]:
    """§7.2 steps 1-2: read a header: (window, key index or None, addressee bytes) or a refusal.
    A format-3 header (§7.4) is read the same way after its generation, which must not be 0."""
    if len(token) < 1:
        raise TokenError("Malformed")
    if token[0] not in (FORMAT_WINDOW, FORMAT_INDEXED, FORMAT_GENERATIONAL):
        raise TokenError("UnknownFormat")
    fixed = {FORMAT_WINDOW: 6, FORMAT_INDEXED: 10, FORMAT_GENERATIONAL: 12}[token[0]]  # bytes before the addressee
    if len(token) < fixed:
        raise TokenError("Malformed")
    at = 1
    if token[0] == FORMAT_GENERATIONAL:
        if int.from_bytes(token[1:3], "big") == 0:
            raise TokenError("Malformed")
        at = 3
    window = int.from_bytes(token[at:at + 4], "big")
    index = None if token[0] == FORMAT_WINDOW else int.from_bytes(token[at + 4:at + 8], "big")
    length = token[fixed - 1]
    if len(token) < fixed + length:
        raise TokenError("Malformed")
    return window, index, token[fixed:fixed + length]


def parse_claims(plain: bytes) -> dict:
    """§7.2 step 5: split authentic claims; any failure is `Forged`."""
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if len(plain) - pos < n:
            raise TokenError("Forged")
        pos += n
        return plain[pos - n:pos]

    def ident() -> str:
        raw = take(take(1)[0])
        if not ID_RE.fullmatch(raw):
            raise TokenError("Forged")
        return raw.decode("ascii")

    h, serial = take(16), take(16)
    expires_at = int.from_bytes(take(8), "big")
    until = int.from_bytes(take(8), "big")
    requester, affair = ident(), ident()
    n = take(1)[0]
    if n > MAX_ITEMS:
        raise TokenError("Forged")
    items = [ident() for _ in range(n)]
    if pos != len(plain):
        raise TokenError("Forged")
    return {"handle": h.hex(), "serial": serial.hex(), "requester": requester, "affair": affair,
            "items": items, "expires_at": expires_at,
            "non_disclosure_until": until if until != 0 else None}


def open_token(keys: Keys, addressee: str, window: int, token: bytes, index: int | None = None,
               generation: int | None = None) -> dict:
    """§7.2: open `token` with K_seal(addressee, window[, index]) (§7.4: of generation `generation`,
    whose master key `keys` is); the claims or a TokenError."""
    expected = token_header(addressee, window, index, generation)
    # Steps 1-2: the token must start with exactly the key's own header H.
    if token[:len(expected)] != expected:
        got_window, got_index, got_addressee = peek_header(token)
        if not ID_RE.fullmatch(got_addressee):
            raise TokenError("Malformed")
        if got_addressee != addressee.encode("ascii"):
            raise TokenError("WrongAddressee")
        # Only the key name differs: the generation, the window, the index, or the format.
        raise TokenError("WrongWindow")
    rest = token[len(expected):]
    # Step 3: room for a nonce and a tag after H.
    if len(rest) < NONCE_LEN + TAG_LEN:
        raise TokenError("Malformed")
    # Step 4: authenticate and decrypt (AAD = `fugo/v1/token` ‖ H).
    try:
        plain = AESGCM(k_seal(keys, addressee, window, index)).decrypt(
            rest[:NONCE_LEN], rest[NONCE_LEN:], TOKEN_AAD_LABEL + expected)
    except InvalidTag:
        raise TokenError("Forged") from None
    # Step 5: the plaintext splits exactly into the fields of `claims`.
    return parse_claims(plain)


def token_error_of(keys: Keys, addressee: str, window: int, token: bytes,
                   index: int | None = None, generation: int | None = None) -> str | None:
    try:
        open_token(keys, addressee, window, token, index, generation)
    except TokenError as e:
        return e.kind
    return None


# The cases of the positive token vectors: (description, key, number,
# addressee, window, requester, affair, items, expires_at, non_disclosure_until).
DAY = 86400
TOKEN_CASES = [
    ("one item, no non-disclosure date", "demo", "123456789018", "nta", 20000,
     "city-shinjuku", "local-tax.assessment", ["income"], 20000 * DAY + 3600, None),
    ("three items, with a non-disclosure date", "demo", "983205673214", "city-shinjuku", 20001,
     "mhlw", "health-insurance-benefit", ["local-tax", "resident", "household"],
     20001 * DAY + 7 * DAY, 20001 * DAY + 180 * DAY),
    ("one-byte ids everywhere, window 0 (1970-01-01)", "demo", "000000000000", "0", 0,
     "1", "2", ["3"], 1, 2),
    ("63-byte addressee, requester, affair and item; largest window", "demo", "000000000019",
     "a" * 63, WINDOW_MAX, "z" * 63, "9" * 63, ["m" * 63, "x"], 2**64 - 1, 2**64 - 1),
    ("64 items (the most a token names)", "demo", "123456789018", "jps.pension", 20500,
     "moj_family-register", "family-register.check", [f"item-{i:02d}" for i in range(64)],
     20500 * DAY + 86399, None),
    ("second key, two items, non-disclosure date", "second", "123456789018", "nta", 20000,
     "pref-13-welfare", "public-assistance", ["pension.amount", "income"],
     20000 * DAY + 600, 20000 * DAY + 30 * DAY),
    ("same inputs as the first vector but another nonce and serial", "demo", "123456789018", "nta", 20000,
     "city-shinjuku", "local-tax.assessment", ["income"], 20000 * DAY + 3600, None),
    ("ids with '.', '_' and '-', window one day later", "demo", "983205673214", "mhlw", 20001,
     "a.b_c-d", "x-y.z_0", ["p_q", "r.s", "t-u", "v"], 20001 * DAY + 1, None),
]


# Format 2: the same shape with the key index after the window.
TOKEN2_CASES = [
    ("format 2: one item, key index 0", "demo", "123456789018", "nta", 20000, 0,
     "city-shinjuku", "local-tax.assessment", ["income"], 20000 * DAY + 3600, None),
    ("format 2: the same inputs under key index 1 (another key)", "demo", "123456789018", "nta", 20000, 1,
     "city-shinjuku", "local-tax.assessment", ["income"], 20000 * DAY + 3600, None),
    ("format 2: three items, non-disclosure date, a random-looking index", "demo", "983205673214",
     "city-shinjuku", 20001, 0x9E3779B9, "mhlw", "health-insurance-benefit",
     ["local-tax", "resident", "household"], 20001 * DAY + 7 * DAY, 20001 * DAY + 180 * DAY),
    ("format 2: one-byte ids, window 0, largest index", "demo", "000000000000", "0", 0, INDEX_MAX,
     "1", "2", ["3"], 1, 2),
    ("format 2: 63-byte ids, largest window, index 2^31 (the top bit)", "demo", "000000000019",
     "a" * 63, WINDOW_MAX, 2**31, "z" * 63, "9" * 63, ["m" * 63, "x"], 2**64 - 1, 2**64 - 1),
    ("format 2: 64 items", "demo", "123456789018", "jps.pension", 20500, 42,
     "moj_family-register", "family-register.check", [f"item-{i:02d}" for i in range(64)],
     20500 * DAY + 86399, None),
    ("format 2: second key, key index 0", "second", "123456789018", "nta", 20000, 0,
     "pref-13-welfare", "public-assistance", ["pension.amount", "income"],
     20000 * DAY + 600, 20000 * DAY + 30 * DAY),
]


def token_vector(i: int, case: tuple, index: int | None = None, seed: str = "token") -> dict:
    (description, key, number, addressee, window, requester, affair, items,
     expires_at, until) = case
    keys = KEYS[key]
    h = person_handle(keys, parse_my_number(number))
    serial = seeded(f"{seed}/serial/{i}")[:16]
    nonce = seeded(f"{seed}/nonce/{i}")[:NONCE_LEN]
    key_bytes = k_seal(keys, addressee, window, index)
    header = token_header(addressee, window, index)
    claims = token_claims(h, serial, requester, affair, items, expires_at, until)
    token = seal_raw(key_bytes, header, nonce, claims)
    # Round trip (§7.2): the token opens back to its inputs.
    opened = open_token(keys, addressee, window, token, index)
    assert opened == {"handle": h.hex(), "serial": serial.hex(), "requester": requester,
                      "affair": affair, "items": items, "expires_at": expires_at,
                      "non_disclosure_until": until}, description
    return {"description": description, "key": key, "number": number, "handle": h.hex(),
            "addressee": addressee, "window": window, "index": index,
            "serial": serial.hex(), "nonce": nonce.hex(),
            "requester": requester, "affair": affair, "items": items,
            "expires_at": expires_at, "non_disclosure_until": until,
            "k_seal": key_bytes.hex(), "header": header.hex(), "claims": claims.hex(),
            "token": token.hex()}


def token_positive_vectors() -> list[dict]:
    """Format 1 first (the eight vectors of before format 2, unchanged), then format 2."""
    out = [token_vector(i, case) for i, case in enumerate(TOKEN_CASES)]
    # Fresh nonces: the two tokens of the same claims share only the header.
    a, b = bytes.fromhex(out[0]["token"]), bytes.fromhex(out[6]["token"])
    header_len = len(bytes.fromhex(out[0]["header"]))
    assert a[:header_len] == b[:header_len] and a[header_len:] != b[header_len:]
    for i, case in enumerate(TOKEN2_CASES):
        (description, key, number, addressee, window, index, *rest) = case
        out.append(token_vector(i, (description, key, number, addressee, window, *rest),
                                index=index, seed="token2"))
    # Another key index is another key: the two keys differ, and so do the tokens.
    first, other = out[len(TOKEN_CASES)], out[len(TOKEN_CASES) + 1]
    assert first["k_seal"] != other["k_seal"] and first["claims"] != other["claims"]
    assert first["k_seal"] != out[0]["k_seal"]          # nor is index 0 the format-1 key
    return out


def token_negative_vectors(positive: list[dict]) -> list[dict]:
    out = []
    base = positive[0]                       # demo key, addressee nta, window 20000
    T = bytes.fromhex(base["token"])
    H = len(bytes.fromhex(base["header"]))   # header length
    addressee, window = base["addressee"], base["window"]
    demo = KEYS["demo"]

    def neg(description: str, token: bytes, expected: str, key: str = "demo",
            addressee: str = addressee, window: int = window, index: int | None = None) -> None:
        got = token_error_of(KEYS[key], addressee, window, token, index)
        assert got == expected, f"{description}: expected {expected}, got {got}"
        out.append({"description": description, "key": key, "addressee": addressee,
                    "window": window, "index": index, "token": token.hex(), "error": got})

    def flip(index: int, bit: int) -> bytes:
        changed = bytearray(T)
        changed[index] ^= 1 << bit
        return bytes(changed)

    def with_header(header: bytes) -> bytes:
        return header + T[H:]

    # --- §7.2 step 1: format byte ---------------------------------------------
    neg("empty token", b"", "Malformed")
    neg("format byte 0x00", bytes([0x00]) + T[1:], "UnknownFormat")
    neg("format byte 0x04", bytes([0x04]) + T[1:], "UnknownFormat")
    neg("format byte with its top bit flipped (0x81)", flip(0, 7), "UnknownFormat")
    neg("a lone format byte 0x04: the format is checked before the length", bytes([0x04]), "UnknownFormat")
    neg("a lone format byte 0x02 (format 2, known): too short", bytes([0x02]), "Malformed")
    neg("format byte 0x02 on a format-1 token: the window and the next four bytes are read as "
        "window and key index, the addressee length from the nonce", bytes([0x02]) + T[1:], "Malformed")

    # --- §7.2 step 2: the rest of the header ---------------------------------
    neg("truncated to the format byte", T[:1], "Malformed")
    neg("truncated inside the window (3 of 4 bytes)", T[:4], "Malformed")
    neg("truncated before the addressee length byte", T[:5], "Malformed")
    neg("truncated inside the addressee (2 of 3 bytes)", T[:H - 1], "Malformed")
    neg("lowest bit of the window flipped", flip(4, 0), "WrongWindow")
    neg("highest bit of the window flipped", flip(1, 7), "WrongWindow")
    neg("addressee length 3 -> 2 ('nt', then a nonce byte): another addressee",
        flip(5, 0), "WrongAddressee")
    neg("addressee length 0 (empty id)", T[:5] + b"\x00" + T[6:], "Malformed")
    neg("addressee byte 'n' -> 'N' (uppercase is not an id)", flip(6, 5), "Malformed")
    neg("addressee byte 'n' -> 'o' ('ota', a valid id of another agency)", flip(6, 0), "WrongAddressee")
    neg("addressee byte 'a' -> 0xe1 (not ASCII)", flip(8, 7), "Malformed")
    neg("opened by another addressee's key (mhlw)", T, "WrongAddressee", addressee="mhlw")
    neg("opened by a longer addressee's key ('ntax')", T, "WrongAddressee", addressee="ntax")
    neg("opened with the key of the next window", T, "WrongWindow", window=window + 1)
    neg("opened with the key of the previous window", T, "WrongWindow", window=window - 1)
    neg("opened with the key of window 0", T, "WrongWindow", window=0)

    # --- §7.2 step 3: room for nonce and tag ------------------------------------
    neg("header only", T[:H], "Malformed")
    neg("header and nonce only", T[:H + NONCE_LEN], "Malformed")
    neg("header, nonce and 15 bytes (one short of a tag)", T[:H + NONCE_LEN + TAG_LEN - 1], "Malformed")

    # --- §7.2 step 4: authentication ------------------------------------------
    neg("header, nonce and the first 16 sealed bytes (tag-sized, but not the tag)",
        T[:H + NONCE_LEN + TAG_LEN], "Forged")
    neg("last byte dropped", T[:-1], "Forged")
    neg("extra trailing zero byte", T + b"\x00", "Forged")
    neg("first nonce byte, lowest bit flipped", flip(H, 0), "Forged")
    neg("last nonce byte, top bit flipped", flip(H + NONCE_LEN - 1, 7), "Forged")
    neg("first ciphertext byte, lowest bit flipped", flip(H + NONCE_LEN, 0), "Forged")
    neg("a ciphertext byte in the middle flipped", flip(H + NONCE_LEN + 40, 3), "Forged")
    neg("last ciphertext byte flipped", flip(len(T) - TAG_LEN - 1, 6), "Forged")
    neg("first tag byte flipped", flip(len(T) - TAG_LEN, 0), "Forged")
    neg("last tag byte flipped", flip(len(T) - 1, 7), "Forged")
    neg("nonce and sealed bytes all zero", T[:H] + bytes(len(T) - H), "Forged")
    neg("the right addressee and window but sealed under the second master key",
        bytes.fromhex(positive[5]["token"]), "Forged")
    neg("header rewritten to addressee mhlw, opened by mhlw (the header is bound as AAD and selects the key)",
        with_header(token_header("mhlw", window)), "Forged", addressee="mhlw")
    neg("header rewritten to the next window, opened with that window's key",
        with_header(token_header(addressee, window + 1)), "Forged", window=window + 1)
    other = positive[1]                      # addressed to city-shinjuku
    neg("the nonce and sealed part of a token to city-shinjuku under the nta header",
        T[:H] + bytes.fromhex(other["token"])[len(bytes.fromhex(other["header"])):], "Forged")
    neg("nonce of another token (same key and claims)",
        T[:H] + bytes.fromhex(positive[6]["nonce"]) + T[H + NONCE_LEN:], "Forged")

    # --- §7.2 step 5: authentic claims that do not split -------------------------
    # Sealed correctly under K_seal(nta, 20000): only the claims are wrong.
    key = k_seal(demo, addressee, window)
    header = T[:H]
    h = bytes.fromhex(base["handle"])
    serial = bytes.fromhex(base["serial"])
    head = h + serial + (20000 * DAY).to_bytes(8, "big") + bytes(8)
    good_ids = short_string(b"city-shinjuku") + short_string(b"local-tax.assessment")

    def sealed(i: int, claims: bytes) -> bytes:
        return seal_raw(key, header, seeded(f"token/negative-nonce/{i}")[:NONCE_LEN], claims)

    # A well-formed control: these claims open (so only the changes below fail).
    assert open_token(demo, addressee, window, sealed(0, head + good_ids + b"\x01" + short_string(b"income")))
    cases = [
        ("65 items claimed (the most is 64)",
         head + good_ids + bytes([65]) + b"".join(short_string(f"i{k}".encode()) for k in range(65))),
        ("255 items claimed, 255 present",
         head + good_ids + bytes([255]) + b"".join(short_string(f"i{k}".encode()) for k in range(255))),
        ("3 items claimed, 2 present", head + good_ids + b"\x03" + short_string(b"income") + short_string(b"resident")),
        ("1 item claimed, none present", head + good_ids + b"\x01"),
        ("item count byte missing", head + good_ids),
        ("a trailing byte after the items", head + good_ids + b"\x01" + short_string(b"income") + b"\x00"),
        ("item length runs past the end", head + good_ids + b"\x01" + b"\x07income"),
        ("empty item id", head + good_ids + b"\x01" + short_string(b"")),
        ("64-byte item id (ids are at most 63 bytes)", head + good_ids + b"\x01" + short_string(b"a" * 64)),
        ("uppercase requester", head + short_string(b"City-Shinjuku") + short_string(b"local-tax.assessment")
         + b"\x01" + short_string(b"income")),
        ("requester starting with '-'", head + short_string(b"-city") + short_string(b"local-tax.assessment")
         + b"\x01" + short_string(b"income")),
        ("affair with a non-ASCII byte", head + short_string(b"city-shinjuku") + short_string(b"tax\xe3")
         + b"\x01" + short_string(b"income")),
        ("affair with a '/'", head + short_string(b"city-shinjuku") + short_string(b"tax/x")
         + b"\x01" + short_string(b"income")),
        ("claims of 31 bytes (shorter than handle and serial)", (h + serial)[:31]),
        ("handle and serial only", h + serial),
        ("empty claims", b""),
        ("non-disclosure date cut short", h + serial + bytes(12)),
    ]
    for i, (description, claims) in enumerate(cases, start=1):
        neg(f"authentic claims that do not split: {description}", sealed(i, claims), "Forged")
    return out


def token2_negative_vectors(positive: list[dict]) -> list[dict]:
    """§7.2 for format 2: the key index is part of the key name and of the AAD."""
    out = []
    base = positive[len(TOKEN_CASES)]        # format 2: demo key, nta, window 20000, index 0
    assert base["index"] == 0
    T = bytes.fromhex(base["token"])
    H = len(bytes.fromhex(base["header"]))   # 10 + len("nta") = 13
    addressee, window, index = base["addressee"], base["window"], base["index"]
    demo = KEYS["demo"]
    v1 = bytes.fromhex(positive[0]["token"])  # format 1, same addressee, window and claims

    def neg(description: str, token: bytes, expected: str, key: str = "demo",
            addressee: str = addressee, window: int = window, index: int | None = index) -> None:
        got = token_error_of(KEYS[key], addressee, window, token, index)
        assert got == expected, f"{description}: expected {expected}, got {got}"
        out.append({"description": description, "key": key, "addressee": addressee,
                    "window": window, "index": index, "token": token.hex(), "error": got})

    def flip(index: int, bit: int) -> bytes:
        changed = bytearray(T)
        changed[index] ^= 1 << bit
        return bytes(changed)

    # --- steps 1-2: format and header ----------------------------------------
    neg("format 2: format byte 0x04", bytes([0x04]) + T[1:], "UnknownFormat")
    neg("format 2: truncated inside the key index (window and 3 of 4 index bytes)", T[:8], "Malformed")
    neg("format 2: truncated before the addressee length byte", T[:9], "Malformed")
    neg("format 2: truncated inside the addressee", T[:H - 1], "Malformed")
    neg("format 2: relabelled format 1 (index byte 0 read as an empty addressee)",
        bytes([0x01]) + T[1:], "Malformed")
    neg("format 2: lowest bit of the key index flipped", flip(8, 0), "WrongWindow")
    neg("format 2: highest bit of the key index flipped", flip(5, 7), "WrongWindow")
    neg("format 2: lowest bit of the window flipped", flip(4, 0), "WrongWindow")
    neg("format 2: addressee byte 'n' -> 'o'", flip(10, 0), "WrongAddressee")
    neg("format 2: opened with the key of the next key index", T, "WrongWindow", index=index + 1)
    neg("format 2: opened with the largest key index", T, "WrongWindow", index=INDEX_MAX)
    neg("format 2: opened with the format-1 key of its window", T, "WrongWindow", index=None)
    neg("format 1 token opened with the format-2 key (index 0) of its window", v1, "WrongWindow")
    neg("format 2: opened by another addressee's key (mhlw)", T, "WrongAddressee", addressee="mhlw")

    # --- step 3 -------------------------------------------------------------
    neg("format 2: header only", T[:H], "Malformed")
    neg("format 2: header, nonce and 15 bytes", T[:H + NONCE_LEN + TAG_LEN - 1], "Malformed")

    # --- step 4: the key index is authenticated ---------------------------------
    for changed in (1, 2**31, INDEX_MAX):
        neg(f"format 2: header rewritten to key index {changed}, opened with that index's key",
            token_header(addressee, window, changed) + T[H:], "Forged", index=changed)
    neg("format 2: header rewritten to format 1, opened with the window's format-1 key",
        token_header(addressee, window) + T[H:], "Forged", index=None)
    neg("format 1 token's nonce and sealed part under a format-2 header (index 0)",
        token_header(addressee, window, 0) + v1[len(token_header(addressee, window)):], "Forged")
    neg("format 2: sealed under the second master key", bytes.fromhex(positive[-1]["token"]), "Forged")
    neg("format 2: first tag byte flipped", flip(len(T) - TAG_LEN, 0), "Forged")
    neg("format 2: first nonce byte flipped", flip(H, 0), "Forged")
    neg("format 2: extra trailing zero byte", T + b"\x00", "Forged")

    # --- step 5: authentic claims that do not split -------------------------------
    key = k_seal(demo, addressee, window, index)
    h, serial = bytes.fromhex(base["handle"]), bytes.fromhex(base["serial"])
    head = h + serial + (20000 * DAY).to_bytes(8, "big") + bytes(8)
    ids = short_string(b"city-shinjuku") + short_string(b"local-tax.assessment")
    for i, (description, claims) in enumerate([
        ("65 items claimed", head + ids + bytes([65]) + b"".join(short_string(f"i{k}".encode()) for k in range(65))),
        ("a trailing byte after the items", head + ids + b"\x01" + short_string(b"income") + b"\x00"),
        ("handle and serial only", h + serial),
    ]):
        token = seal_raw(key, T[:H], seeded(f"token2/negative-nonce/{i}")[:NONCE_LEN], claims)
        neg(f"format 2: authentic claims that do not split: {description}", token, "Forged")
    return out


# ---------------------------------------------------------------------------
# §7.4 Format 3: the master-key generation in the authenticated header
# ---------------------------------------------------------------------------

# (description, key, generation, number, addressee, window, index, requester,
# affair, items, expires_at, non_disclosure_until). The key is the master key
# of that generation: "demo" is generation 1 (the key of formats 1 and 2),
# "second" a later one.
TOKEN3_CASES = [
    ("format 3: generation 1 (the demo key), one item, key index 0", "demo", 1, "123456789018", "nta",
     20000, 0, "city-shinjuku", "local-tax.assessment", ["income"], 20000 * DAY + 3600, None),
    ("format 3: generation 2 (the second key), same inputs", "second", 2, "123456789018", "nta",
     20000, 0, "city-shinjuku", "local-tax.assessment", ["income"], 20000 * DAY + 3600, None),
    ("format 3: generation 2, three items, non-disclosure date, a random-looking index", "second", 2,
     "983205673214", "city-shinjuku", 20001, 0x9E3779B9, "mhlw", "health-insurance-benefit",
     ["local-tax", "resident", "household"], 20001 * DAY + 7 * DAY, 20001 * DAY + 180 * DAY),
    ("format 3: largest generation, one-byte ids, window 0, largest index", "second", GENERATION_MAX,
     "000000000000", "0", 0, INDEX_MAX, "1", "2", ["3"], 1, 2),
    ("format 3: generation 2, 63-byte ids, largest window", "second", 2, "000000000019",
     "a" * 63, WINDOW_MAX, 2**31, "z" * 63, "9" * 63, ["m" * 63, "x"], 2**64 - 1, 2**64 - 1),
    ("format 3: generation 2, 64 items", "second", 2, "123456789018", "jps.pension", 20500, 42,
     "moj_family-register", "family-register.check", [f"item-{i:02d}" for i in range(64)],
     20500 * DAY + 86399, None),
    ("format 3: generation 258 (both header bytes in use)", "second", 258, "983205673214", "mhlw",
     20001, 7, "a.b_c-d", "x-y.z_0", ["p_q", "r.s", "t-u", "v"], 20001 * DAY + 1, None),
]


def token3_vector(i: int, case: tuple) -> dict:
    (description, key, generation, number, addressee, window, index, requester, affair, items,
     expires_at, until) = case
    keys = KEYS[key]
    h = person_handle(keys, parse_my_number(number))
    serial = seeded(f"token3/serial/{i}")[:16]
    nonce = seeded(f"token3/nonce/{i}")[:NONCE_LEN]
    key_bytes = k_seal(keys, addressee, window, index)
    header = token_header(addressee, window, index, generation)
    claims = token_claims(h, serial, requester, affair, items, expires_at, until)
    token = seal_raw(key_bytes, header, nonce, claims)
    opened = open_token(keys, addressee, window, token, index, generation)
    assert opened["handle"] == h.hex() and opened["serial"] == serial.hex(), description
    return {"description": description, "key": key, "generation": generation, "number": number,
            "handle": h.hex(), "addressee": addressee, "window": window, "index": index,
            "serial": serial.hex(), "nonce": nonce.hex(),
            "requester": requester, "affair": affair, "items": items,
            "expires_at": expires_at, "non_disclosure_until": until,
            "k_seal": key_bytes.hex(), "header": header.hex(), "claims": claims.hex(),
            "token": token.hex()}


def token3_positive_vectors(format2: list[dict]) -> list[dict]:
    out = [token3_vector(i, case) for i, case in enumerate(TOKEN3_CASES)]
    # Generation 1's key of (nta, 20000, 0) is format 2's: the label is the same and the
    # master key names the generation; the header (bound as AAD) tells the tokens apart.
    f2 = next(v for v in format2 if v["index"] == 0 and v["key"] == "demo" and v["addressee"] == "nta")
    assert out[0]["k_seal"] == f2["k_seal"] and out[0]["header"] != f2["header"]
    # Another generation is another key, and another handle of the same person.
    assert out[0]["k_seal"] != out[1]["k_seal"] and out[0]["handle"] != out[1]["handle"]
    return out


def token3_negative_vectors(positive: list[dict], legacy: list[dict]) -> list[dict]:
    """§7.2 for format 3 (§7.4): the generation is part of the key name and of the AAD."""
    out = []
    base = positive[1]                        # second key as generation 2, nta, 20000, index 0
    T = bytes.fromhex(base["token"])
    H = len(bytes.fromhex(base["header"]))    # 12 + len("nta") = 15
    addressee, window, index, generation = base["addressee"], base["window"], base["index"], base["generation"]
    v2 = bytes.fromhex(next(v for v in legacy if v["index"] == 0 and v["key"] == "demo"
                            and v["addressee"] == "nta")["token"])
    v1 = bytes.fromhex(legacy[0]["token"])    # format 1, demo, nta, 20000

    def neg(description: str, token: bytes, expected: str, key: str = "second",
            addressee: str = addressee, window: int = window, index: int | None = index,
            generation: int | None = generation) -> None:
        got = token_error_of(KEYS[key], addressee, window, token, index, generation)
        assert got == expected, f"{description}: expected {expected}, got {got}"
        out.append({"description": description, "key": key, "addressee": addressee,
                    "window": window, "index": index, "generation": generation,
                    "token": token.hex(), "error": got})

    def flip(at: int, bit: int) -> bytes:
        changed = bytearray(T)
        changed[at] ^= 1 << bit
        return bytes(changed)

    # --- steps 1-2: format and header ----------------------------------------
    neg("format 3: format byte 0x04", bytes([0x04]) + T[1:], "UnknownFormat")
    neg("format 3: a lone format byte 0x03", bytes([0x03]), "Malformed")
    neg("format 3: truncated inside the generation", T[:2], "Malformed")
    neg("format 3: truncated inside the key index", T[:10], "Malformed")
    neg("format 3: truncated inside the addressee", T[:H - 1], "Malformed")
    neg("format 3: generation 0 (no generation)", T[:1] + b"\x00\x00" + T[3:], "Malformed")
    neg("format 3: generation 2 -> 3 (lowest bit flipped)", flip(2, 0), "WrongWindow")
    neg("format 3: generation 2 -> 258 (high byte)", flip(1, 0), "WrongWindow")
    neg("format 3: lowest bit of the window flipped", flip(6, 0), "WrongWindow")
    neg("format 3: lowest bit of the key index flipped", flip(10, 0), "WrongWindow")
    neg("format 3: addressee byte 'n' -> 'o'", flip(12, 0), "WrongAddressee")
    neg("format 3: opened by another addressee's key (mhlw)", T, "WrongAddressee", addressee="mhlw")
    neg("format 3: opened as generation 3 (the same master key named otherwise)", T, "WrongWindow",
        generation=3)
    neg("format 3: opened with the format-2 key of its window and index", T, "WrongWindow",
        generation=None)
    neg("format 2 token opened with the generation-1 format-3 key of its window and index", v2,
        "WrongWindow", key="demo", generation=1)
    neg("format 1 token relabelled format 3 (window bytes read as generation and window)",
        bytes([0x03]) + v1[1:], "Malformed", key="demo", generation=1)
    neg("format 2 token relabelled format 3", bytes([0x03]) + v2[1:], "Malformed", key="demo",
        generation=1)

    # --- step 3 -------------------------------------------------------------
    neg("format 3: header only", T[:H], "Malformed")
    neg("format 3: header, nonce and 15 bytes", T[:H + NONCE_LEN + TAG_LEN - 1], "Malformed")

    # --- step 4: the generation is authenticated ---------------------------------
    neg("format 3: header rewritten to generation 3, opened as generation 3 with the same key",
        token_header(addressee, window, index, 3) + T[H:], "Forged", generation=3)
    neg("format 3: header rewritten to format 2, opened with the format-2 key",
        token_header(addressee, window, index) + T[H:], "Forged", generation=None)
    f3g1 = bytes.fromhex(positive[0]["token"])
    neg("format 3: a generation-1 token's body under a generation-2 header",
        T[:H] + f3g1[H:], "Forged")
    neg("format 3: a generation-1 token relabelled generation 2, opened with generation 2's key",
        f3g1[:1] + (2).to_bytes(2, "big") + f3g1[3:], "Forged")
    neg("format 3: sealed under generation 1's key, opened with generation 2's", f3g1[:1] + T[1:H] + f3g1[H:],
        "Forged")
    neg("format 3: first tag byte flipped", flip(len(T) - TAG_LEN, 0), "Forged")
    neg("format 3: first nonce byte flipped", flip(H, 0), "Forged")
    neg("format 3: extra trailing zero byte", T + b"\x00", "Forged")
    return out


# ---------------------------------------------------------------------------

def audit_vectors(positive: list[dict]) -> dict:
    """§8: each key's K_link, log seed and Ed25519 public key (RFC 8032,
    from the seed), and the person link of the first positive vectors'
    handles: link = AES-256(K_link, h)."""
    keys = []
    for name, k in KEYS.items():
        public = Ed25519PrivateKey.from_private_bytes(k.log_seed()).public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        keys.append({"key": name, "k_link": k.k_link().hex(), "log_seed": k.log_seed().hex(),
                     "log_public_key": public.hex()})
    links = []
    for vector in positive[:8]:
        k = KEYS[vector["key"]]
        handle = bytes.fromhex(vector["handle"])
        links.append({"key": vector["key"], "number": vector["number"], "handle": vector["handle"],
                      "link": aes256_encrypt_block(k.k_link(), handle).hex()})
    return {"keys": keys, "links": links}


def main() -> None:
    self_check()
    tokens = token_positive_vectors()
    tokens3 = token3_positive_vectors(tokens)
    keys = [{"name": name, "master_key": k.master_key.hex(), "fingerprint": k.fingerprint()}
            for name, k in KEYS.items()]
    positive = positive_vectors()
    doc = {
        "spec": "docs/SPEC.md v1",
        "generator": "tests/vectors/gen.py",
        "keys": keys,
        "positive": positive,
        "negative": negative_vectors(),
        "tokens": {"positive": tokens,
                   "negative": token_negative_vectors(tokens) + token2_negative_vectors(tokens)},
        "tokens3": {"positive": tokens3, "negative": token3_negative_vectors(tokens3, tokens)},
        "audit": audit_vectors(positive),
    }
    sys.stdout.buffer.write((json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


if __name__ == "__main__":
    main()
