"""What the HTTP API accepts and answers (the OpenAPI document is generated from these models)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from services.identity.domain.normalise import normalise_email, normalise_mobile, normalise_name, normalise_vin

Locale = Literal["fr-FR", "fr-CA", "fr-BE", "nl-BE", "nl-NL", "en"]
Email = Annotated[str, Field(min_length=3, max_length=320, examples=["jeanne.martin@example.fr"],
                             json_schema_extra={"format": "email"}),
                  AfterValidator(normalise_email)]
Name = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(normalise_name)]
Password = Annotated[str, Field(min_length=1, max_length=1024, description="12 to 128 characters, hard to guess")]
Token = Annotated[str, Field(min_length=1, max_length=512)]
Mobile = Annotated[str, Field(min_length=4, max_length=32, examples=["+32470123456"])]
CustomerNumber = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{2,31}$", examples=["BE-100234"])]


def _nonblank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class WithMobile(Body):
    locale: Locale
    mobile: Mobile | None = None

    @field_validator("mobile")
    @classmethod
    def _mobile_in_e164(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else normalise_mobile(value, info.data.get("locale"))


class RegistrationBody(WithMobile):
    first_name: Name
    last_name: Name
    email: Email
    password: Password
    terms_version: Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_nonblank)]
    terms_accepted: bool = Field(description="Must be true: the terms are a condition of registering")


class CustomerNumberCodeBody(Body):
    customer_number: CustomerNumber
    locale: Locale


class CustomerNumberRegistrationBody(RegistrationBody):
    customer_number: CustomerNumber
    code: Annotated[str, Field(pattern=r"^[0-9]{6}$", description="The code texted to the mobile number on file")]
    contract_number: Annotated[str, Field(
        min_length=3, max_length=40, pattern=r"^[A-Za-z0-9][A-Za-z0-9/-]*$", examples=["BE-100234-L1"],
        description="The number of one of the customer's contracts: the security detail asked at registration",
    )]


class ActivationBody(Body):
    token: Token
    password: Password | None = Field(default=None, description="Only for invited users who have none yet")


class EmailBody(Body):
    email: Email


class LoginBody(Body):
    email: Email
    password: Password
    device_token: Token | None = Field(default=None, description="Proves a remembered device")


class RefreshBody(Body):
    refresh_token: Token


class ResetBody(Body):
    token: Token
    new_password: Password


class ForcedChangeBody(Body):
    change_ticket: Token
    new_password: Password


class ChangePasswordBody(Body):
    current_password: Password
    new_password: Password


class DeviceCodeBody(Body):
    challenge: Token
    channel: Literal["email", "sms"]


class DeviceVerifyBody(Body):
    challenge: Token
    code: Annotated[str, Field(pattern=r"^[0-9]{6}$")]
    remember: bool = Field(default=False, description="Remember this device (180 days after its last use)")
    device_label: Annotated[str, Field(max_length=200)] | None = None


class VehicleLinkBody(Body):
    method: Literal["vehicle"]
    first_name: Name
    last_name: Name
    vin: Annotated[str, Field(min_length=17, max_length=24, examples=["VF1RFB00067123456"]), AfterValidator(normalise_vin)]
    last_payment_amount: Annotated[Decimal, Field(gt=0, max_digits=14, decimal_places=2)]


class CustomerNumberLinkBody(Body):
    method: Literal["customer_number"]
    customer_number: CustomerNumber


ContractLinkBody = Annotated[VehicleLinkBody | CustomerNumberLinkBody, Field(discriminator="method")]


class PersonBody(WithMobile):
    first_name: Name
    last_name: Name
    email: Email


class OrganisationBody(Body):
    name: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_nonblank)]
    kind: Literal["intermediary", "garage", "dealership"]
    administrator: PersonBody


class InviteBody(PersonBody):
    role: Literal["adviser", "garage", "salesperson", "administrator"]


class PasswordChangeRequirementBody(Body):
    everyone: bool = False
    account_ids: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=1000)] = []

    @model_validator(mode="after")
    def _one_scope(self) -> "PasswordChangeRequirementBody":
        if self.everyone == bool(self.account_ids):
            raise ValueError("give either everyone=true or a non-empty list of account_ids")
        return self


# --- answers ---------------------------------------------------------------------------------------


class Accepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    message: str


class Done(BaseModel):
    status: str


class Tokens(BaseModel):
    status: Literal["authenticated"]
    token_type: Literal["Bearer"]
    access_token: str
    expires_in: int
    refresh_token: str
    session_id: str
    device_token: str | None = Field(default=None, description="Present when the device was remembered")


class DeviceChallenge(BaseModel):
    status: Literal["device_authorisation_required"]
    challenge: str
    channels: list[Literal["email", "sms"]]
    expires_at: datetime


class CodeSent(BaseModel):
    status: Literal["code_sent"]
    channel: Literal["email", "sms"]
    code_expires_at: datetime


class Me(BaseModel):
    account_id: str
    kind: str
    email: str
    first_name: str
    last_name: str
    locale: str
    mobile: str | None
    roles: list[str]
    organisation_id: str | None
    link: dict[str, Any]
    customer_number: str | None
    contract_numbers: list[str]


class SessionItem(BaseModel):
    session_id: str
    label: str
    device_id: str | None
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    current: bool


class CertificateBody(BaseModel):
    certificate_pem: str = Field(min_length=1, max_length=20_000, description="The certificate (not its key), PEM")
    label: str | None = Field(default=None, max_length=200)


class CertificateRegistered(BaseModel):
    device_id: str
    fingerprint_sha256: str
    subject: str
    not_after: datetime


class DeviceItem(BaseModel):
    device_id: str
    label: str
    remembered: bool
    authorised_at: datetime
    last_used_at: datetime


class LinkRequested(BaseModel):
    status: Literal["pending"] = "pending"
    request_id: str


class OrganisationCreated(BaseModel):
    organisation_id: str
    administrator_id: str


class UserCreated(BaseModel):
    user_id: str


class UserItem(BaseModel):
    user_id: str
    email: str
    first_name: str
    last_name: str
    role: str
    status: str
    locked: bool


class AuditItem(BaseModel):
    audit_id: str
    actor_id: str
    action: str
    target_type: str
    target_id: str
    organisation_id: str | None
    details: dict[str, Any]
    at: datetime


class Count(BaseModel):
    accounts: int


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    code: str


class Error(BaseModel):
    code: str = Field(description="Stable machine-readable reason, e.g. invalid_credentials, activation_expired")
    message: str
    fields: list[FieldError] = []
    details: dict[str, Any] = {}


class ErrorBody(BaseModel):
    error: Error
