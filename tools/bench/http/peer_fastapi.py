# SPDX-License-Identifier: Apache-2.0
# The peer for tools/bench/http: FastAPI + uvicorn serving the same two routes as dibba-api.
# GET /healthz, and GET /v1/me with a JWT (HS256) verified on every request and the user looked up.
import os
import sys

import jwt
import uvicorn
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import OAuth2PasswordBearer

SECRET = os.environ["BENCH_JWT_SECRET"]
USERS = {"bench": {"role": "viewer", "enabled": True}}

app = FastAPI()
oauth2 = OAuth2PasswordBearer(tokenUrl="token")


@app.get("/healthz")
def healthz():
    return {"status": "ok"}


def current_user(token: str = Depends(oauth2)):
    try:
        claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"require": ["exp", "iat", "sub"]})
    except jwt.PyJWTError:
        raise HTTPException(status_code=401, detail="invalid token", headers={"WWW-Authenticate": "Bearer"})
    user = USERS.get(claims.get("sub"))
    if not user or not user["enabled"] or user["role"] != claims.get("role"):
        raise HTTPException(status_code=401, detail="invalid token", headers={"WWW-Authenticate": "Bearer"})
    return {"sub": claims["sub"], "role": claims["role"]}


@app.get("/v1/me")
def me(user=Depends(current_user)):
    return user


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
