#!/usr/bin/env python3
"""ML-DSA DPoP proofs (RFC 9449 + RFC 9964) checked with an independent implementation,
the Python `cryptography` package (>= 47, built on OpenSSL's FIPS 204 code).

  mldsa-interop.py generate          prints ML-DSA-44 and ML-DSA-65 proofs, their public
                                     JWKs and RFC 7638 thumbprints as JSON (the source of
                                     crates/dpop-core/tests/vectors/ml-dsa-proofs.json)
  mldsa-interop.py verify PROOF JKT  checks a proof made elsewhere: header, AKP JWK,
                                     thumbprint and the pure ML-DSA signature (empty
                                     context); exits 0 when valid, 1 otherwise

Needs: pip install "cryptography>=47".
"""

import base64
import hashlib
import json
import secrets
import sys
import time

from cryptography.hazmat.primitives.asymmetric import mldsa

SETS = {
    "ML-DSA-44": (mldsa.MLDSA44PrivateKey, mldsa.MLDSA44PublicKey, 1312),
    "ML-DSA-65": (mldsa.MLDSA65PrivateKey, mldsa.MLDSA65PublicKey, 1952),
    "ML-DSA-87": (mldsa.MLDSA87PrivateKey, mldsa.MLDSA87PublicKey, 2592),
}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def thumbprint(jwk: dict) -> str:
    # RFC 7638 with the RFC 9964 required members of an AKP key, in lexicographic order.
    canonical = json.dumps(
        {"alg": jwk["alg"], "kty": "AKP", "pub": jwk["pub"]},
        separators=(",", ":"),
        sort_keys=True,
    )
    return b64(hashlib.sha256(canonical.encode()).digest())


def generate() -> None:
    out = []
    for alg in ("ML-DSA-44", "ML-DSA-65"):
        private_cls, _, _ = SETS[alg]
        key = private_cls.generate()
        jwk = {"kty": "AKP", "alg": alg, "pub": b64(key.public_key().public_bytes_raw())}
        header = {"typ": "dpop+jwt", "alg": alg, "jwk": jwk}
        claims = {
            "jti": b64(secrets.token_bytes(16)),
            "htm": "POST",
            "htu": "https://server.example.com/token",
            "iat": int(time.time()),
        }
        signing_input = (
            b64(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = key.sign(signing_input.encode())
        out.append(
            {
                "alg": alg,
                "jwk": jwk,
                "jkt": thumbprint(jwk),
                "htm": claims["htm"],
                "htu": claims["htu"],
                "iat": claims["iat"],
                "proof": signing_input + "." + b64(signature),
            }
        )
    json.dump(
        {
            "source": "scripts/mldsa-interop.py generate (Python cryptography "
            + __import__("cryptography").__version__
            + ")",
            "proofs": out,
        },
        sys.stdout,
        indent=2,
    )
    print()


def verify(proof: str, expected_jkt: str) -> bool:
    h64, p64, s64 = proof.split(".")
    header = json.loads(unb64(h64))
    jwk = header["jwk"]
    alg = header["alg"]
    if header.get("typ") != "dpop+jwt" or jwk.get("kty") != "AKP" or jwk.get("alg") != alg:
        print("header: typ, kty or alg wrong", file=sys.stderr)
        return False
    _, public_cls, length = SETS[alg]
    raw = unb64(jwk["pub"])
    if len(raw) != length or "priv" in jwk:
        print("jwk: pub length or priv", file=sys.stderr)
        return False
    if thumbprint(jwk) != expected_jkt:
        print(f"thumbprint {thumbprint(jwk)} != {expected_jkt}", file=sys.stderr)
        return False
    try:
        public_cls.from_public_bytes(raw).verify(unb64(s64), f"{h64}.{p64}".encode())
    except Exception as e:  # InvalidSignature
        print(f"signature: {e!r}", file=sys.stderr)
        return False
    return True


def main() -> int:
    if sys.argv[1:2] == ["generate"]:
        generate()
        return 0
    if sys.argv[1:2] == ["verify"] and len(sys.argv) == 4:
        ok = verify(sys.argv[2], sys.argv[3])
        print("valid" if ok else "invalid")
        return 0 if ok else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
