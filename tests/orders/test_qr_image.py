"""The QR PNG, drawn row by row (backend/orders/qr.py): the same image qrcode's own PIL
factory draws module by module, and it scans."""

from __future__ import annotations

import io

import pytest
import zxingcpp
from PIL import Image

from backend.orders import qr

CONTENTS = ["http://127.0.0.1:8000/pay/" + "A" * 32, "https://qr.alipay.com/bax03431ljhokirwl38f00a7",
            "weixin://wxpay/bizpayurl?pr=abcdefg", "x" * 300]


@pytest.mark.parametrize("content", CONTENTS)
def test_the_png_is_qrcodes_own_image(content: str) -> None:
    code = qr._code(content, "png")
    buf = io.BytesIO()
    code.make_image().save(buf)
    assert qr._png(code.get_matrix()) == buf.getvalue()
    png = qr.render(content, "png")
    image = Image.open(io.BytesIO(png))
    assert image.mode == "1"
    assert [r.text for r in zxingcpp.read_barcodes(image)] == [content]
