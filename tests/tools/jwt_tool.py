#!/usr/bin/env python3
"""Keys and access tokens for the OpenID tests (PyJWT, cryptography).

  jwt_tool.py keys DIR
      writes DIR/provider.jwk.json (an RSA private key as a JWK, kid "provider-key", which the
      test provider signs with and publishes), DIR/provider.pem (the same key) and DIR/rogue.pem
      (another key, which no provider publishes)
  jwt_tool.py mint KEY.pem KID ISSUER AUDIENCE USER ROLES EXPIRES_IN
      prints an RS256 access token: iss, aud, sub and preferred_username USER, roles (comma
      separated, may be empty), iat now, exp now + EXPIRES_IN seconds (negative: already expired)
"""

import json
import os
import sys
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def new_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def keys(directory):
    os.makedirs(directory, exist_ok=True)
    provider, rogue = new_key(), new_key()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(provider))
    jwk.update({"kid": "provider-key", "alg": "RS256", "use": "sig"})
    with open(os.path.join(directory, "provider.jwk.json"), "w") as f:
        json.dump(jwk, f)
    for name, key in [("provider.pem", provider), ("rogue.pem", rogue)]:
        with open(os.path.join(directory, name), "wb") as f:
            f.write(pem(key))


def mint(key_file, kid, issuer, audience, user, roles, expires_in):
    with open(key_file, "rb") as f:
        key = f.read()
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": user,
        "preferred_username": user,
        "roles": [r for r in roles.split(",") if r],
        "iat": now,
        "exp": now + int(expires_in),
    }
    print(jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid}))


if __name__ == "__main__":
    if sys.argv[1] == "keys":
        keys(sys.argv[2])
    elif sys.argv[1] == "mint":
        mint(*sys.argv[2:9])
    else:
        sys.exit(__doc__)
