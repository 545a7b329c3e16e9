from __future__ import annotations

from pydantic import BaseModel, Field


class WechatLogin(BaseModel):
    code: str = Field(min_length=1, max_length=128, description="the wx.login code")


class WechatToken(BaseModel):
    access_token: str
    openid: str
    token_type: str = "bearer"


class StaffLogin(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class StaffToken(BaseModel):
    access_token: str
    role: str
    token_type: str = "bearer"
