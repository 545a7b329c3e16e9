"""Write openapi.json (the contract FastAPI describes) beside this file.

    .venv/bin/python miniprogram_contracts/generate.py
    npx --yes openapi-typescript@7 miniprogram_contracts/openapi.json \
        -o miniprogram_contracts/api.d.ts

A test fails when openapi.json is stale.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def openapi_document() -> str:
    import tempfile

    from backend.app import create_app
    from backend.config import Settings, new_ed25519_pem

    # the app loads its receipt key when it is made: a throwaway one
    key = Path(tempfile.mkdtemp()) / "receipts.pem"
    key.write_text(new_ed25519_pem())
    app = create_app(Settings(payment_sandbox=False, wechat_mchid="x", alipay_appid="x",
                              unionpay_mid="x", unionpay_tid="x", unionpay_msg_src="x",
                              unionpay_msg_src_id="xxxx", unionpay_key="x", app_secret="x" * 32,
                              wechat_platform_certs_dir="x", receipt_signing_key=str(key),
                              public_base_url="https://collection.example.org",
                              pii_key="a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s="))
    return json.dumps(app.openapi(), ensure_ascii=False, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    (HERE / "openapi.json").write_text(openapi_document())
    print(f"wrote {HERE / 'openapi.json'}")
