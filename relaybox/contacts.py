"""The recipient directory: contacts with name, E.164 number, tags and notes; search; CSV.

Search is by name or by number. Names are matched on a stored folded form (:func:`fold`):
Unicode NFKD, combining marks removed (Latin accents, Arabic-script harakat such as zabar/zer/
pesh and shadda, the Devanagari/Bengali nukta and virama), the Arabic/Urdu letter variants that
keyboards mix up made one (ي/ی, ك/ک, ه/ہ, ة/ۃ), zero-width joiners and tatweel dropped, then
casefolded. The query is folded the same way, so "jose" finds "José", "محمد" finds "مُحمّد",
"য়" finds the precomposed "য়". A query made only of digits (Latin, Devanagari, Bengali or
Extended Arabic-Indic), spaces, ``+``, ``-``, ``(``, ``)`` or ``.`` searches the numbers by any
part (a leading national 0 also matches without it).
"""
from __future__ import annotations

import csv
import io
import unicodedata
from typing import Annotated, Any, Literal

import peewee as pw
import phonenumbers
from flask import Response
from flask_openapi3 import APIBlueprint, Tag
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from relaybox.api.common import (
    E164,
    SECURITY,
    PageQuery,
    StrictBody,
    current_account,
    normalize_e164,
    page_of,
)
from relaybox.db import BaseModel as DbModel
from relaybox.db import JSONField, write_tx
from relaybox.errors import ApiError, envelope, invalid
from relaybox.ids import new_id
from relaybox.models import Account
from relaybox.timeutil import iso, now_ms

MAX_IMPORT_ROWS = 10_000
_PHONE_CHARS = set("+-() .\u00a0")
_FOLD = str.maketrans({
    "\u064a": "\u06cc", "\u0649": "\u06cc",  # Arabic yeh / alef maksura -> Farsi/Urdu yeh
    "\u0643": "\u06a9",                      # Arabic kaf -> keheh
    "\u0647": "\u06c1", "\u06d5": "\u06c1",  # heh / ae -> heh goal
    "\u0629": "\u06c3",                      # teh marbuta -> teh marbuta goal
    "\u0640": None, "\u200c": None, "\u200d": None, "\u200b": None, "\ufeff": None,
})


class Contact(DbModel):
    id = pw.CharField(primary_key=True, max_length=40)
    account = pw.ForeignKeyField(Account, backref="contacts", on_delete="CASCADE")
    name = pw.CharField(max_length=200)
    phone = pw.CharField(max_length=20)
    tags = JSONField(default=list)
    notes = pw.TextField(null=True)
    search_name = pw.CharField(max_length=400)
    search_phone = pw.CharField(max_length=20)
    created_at = pw.BigIntegerField()
    updated_at = pw.BigIntegerField()

    class Meta:
        indexes = ((("account", "phone"), True), (("account", "search_name"), False))


class ContactTag(DbModel):
    """One row per (contact, tag): tag filters and list sends by tag use an index."""

    contact = pw.ForeignKeyField(Contact, backref="tag_rows", on_delete="CASCADE")
    account = pw.ForeignKeyField(Account, on_delete="CASCADE")
    tag = pw.CharField(max_length=50)

    class Meta:
        indexes = ((("contact", "tag"), True), (("account", "tag"), False))


# -- normalisation ---------------------------------------------------------------------------
def fold(text: str) -> str:
    """The search form of a name: NFKD, no combining marks, letter variants unified, casefolded."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c)).translate(_FOLD)
    return " ".join(stripped.casefold().split())


def digits_of(text: str) -> str | None:
    """The digits of a number-like query (native digits too), or None when it is not one."""
    out = []
    for c in text:
        if c.isdigit():
            out.append(str(unicodedata.digit(c)))
        elif c not in _PHONE_CHARS:
            return None
    return "".join(out) or None


def _tag(value: str) -> str:
    value = " ".join(value.split()).casefold()
    if not 1 <= len(value) <= 50:
        raise ValueError("each tag must be 1 to 50 characters")
    if any(c in value for c in ";,|"):
        raise ValueError("tags cannot contain ; , or |")
    return value


def _name(value: str) -> str:
    value = " ".join(value.split())  # stored as typed (no NFC: it would rewrite e.g. क़)
    if not value:
        raise ValueError("must not be blank")
    return value


ContactTagValue = Annotated[str, AfterValidator(_tag)]
ContactName = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_name)]


def _unique_tags(v: list[str] | None) -> list[str] | None:
    return None if v is None else list(dict.fromkeys(v))


class ContactIn(StrictBody):
    name: ContactName
    phone: E164 = Field(description="E.164, unique in your directory")
    tags: list[ContactTagValue] = Field(default_factory=list, max_length=20)
    notes: str | None = Field(None, max_length=2000)

    @field_validator("tags")
    @classmethod
    def _dedupe_tags(cls, v: list[str] | None) -> list[str] | None:
        return _unique_tags(v)


class ContactPatch(StrictBody):
    name: ContactName | None = None
    phone: E164 | None = None
    tags: list[ContactTagValue] | None = Field(None, max_length=20)
    notes: str | None = Field(None, max_length=2000)

    @field_validator("tags")
    @classmethod
    def _dedupe_tags(cls, v: list[str] | None) -> list[str] | None:
        return _unique_tags(v)


class ContactPath(BaseModel):
    contact_id: str = Field(max_length=64)


class ContactQuery(PageQuery):
    q: str | None = Field(None, max_length=200, description="Name (any script, any accents) or any part of the number")
    tag: str | None = Field(None, max_length=50)


class ExportQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    tag: str | None = Field(None, max_length=50)


class ImportBody(StrictBody):
    csv: str = Field(min_length=1, description="CSV text with a header: name, phone (or number), tags, notes")
    default_country: str | None = Field(None, pattern=r"^[A-Za-z]{2}$",
                                        description="ISO country for numbers written without +")
    on_duplicate: Literal["skip", "update"] = "skip"


# -- storage -----------------------------------------------------------------------------------
def view(c: Contact) -> dict[str, Any]:
    return {"id": c.id, "name": c.name, "phone": c.phone, "tags": c.tags or [], "notes": c.notes,
            "created_at": iso(c.created_at, millis=False), "updated_at": iso(c.updated_at, millis=False)}


def _set_tags(c: Contact, tags: list[str]) -> None:
    ContactTag.delete().where(ContactTag.contact == c.id).execute()
    if tags:
        ContactTag.insert_many([{"contact": c.id, "account": c.account_id, "tag": t} for t in tags]).execute()


def _fill(c: Contact, name: str, phone: str, tags: list[str], notes: str | None) -> None:
    c.name, c.phone, c.tags, c.notes = name, phone, tags, notes
    c.search_name = fold(name)[:400]
    c.search_phone = phone.lstrip("+")


def _duplicate(account_id: str, phone: str, exclude: str | None = None) -> Contact | None:
    q = Contact.select().where((Contact.account == account_id) & (Contact.phone == phone))
    if exclude:
        q = q.where(Contact.id != exclude)
    return q.first()


def _conflict(existing: Contact) -> ApiError:
    return ApiError("CONFLICT", f"phone: {existing.phone} is already in your contacts ({existing.id})",
                    field="phone", extra={"contact_id": existing.id})


def create(account_id: str, data: ContactIn) -> Contact:
    now = now_ms()
    with write_tx():
        existing = _duplicate(account_id, data.phone)
        if existing is not None:
            raise _conflict(existing)
        c = Contact(id=new_id("ct"), account=account_id, created_at=now, updated_at=now)
        _fill(c, data.name, data.phone, data.tags, data.notes)
        c.save(force_insert=True)
        _set_tags(c, data.tags)
    return c


def search(account_id: str, q: str | None, tag: str | None) -> pw.ModelSelect:
    query = Contact.select().where(Contact.account == account_id)
    if tag:
        try:
            tag = _tag(tag)
        except ValueError as exc:
            raise invalid("tag", str(exc)) from None
        query = query.where(Contact.id.in_(ContactTag.select(ContactTag.contact).where(
            (ContactTag.account == account_id) & (ContactTag.tag == tag))))
    text = (q or "").strip()
    if text:
        digits = digits_of(text)
        if digits:
            cond = Contact.search_phone.contains(digits)
            national = digits.lstrip("0")
            if national != digits and len(national) >= 3:
                cond |= Contact.search_phone.contains(national)
            query = query.where(cond)
        else:
            query = query.where(Contact.search_name.contains(fold(text)))
    return query.order_by(Contact.search_name, Contact.id)


def numbers_with_tags(account: Any, tags: list[str]) -> list[str]:
    """For ``POST /sms/list`` with ``tags``: the numbers of contacts having any of the tags."""
    try:
        wanted = list(dict.fromkeys(_tag(t) for t in tags if isinstance(t, str)))
    except ValueError as exc:
        raise invalid("tags", str(exc)) from None
    rows = (Contact.select(Contact.phone).distinct()
            .join(ContactTag, on=(ContactTag.contact == Contact.id))
            .where((ContactTag.account == account.id) & (ContactTag.tag << wanted))
            .order_by(Contact.phone))
    return [r.phone for r in rows]


# -- CSV -------------------------------------------------------------------------------------
_COLUMNS = {"name": "name", "phone": "phone", "number": "phone", "tags": "tags", "notes": "notes"}


def _row_phone(raw: str, region: str | None) -> str:
    raw = (raw or "").strip()
    if not raw.startswith("+") and region:
        try:
            parsed = phonenumbers.parse(raw, region.upper())
        except phonenumbers.NumberParseException:
            raise ValueError("not a valid phone number") from None
        if not phonenumbers.is_valid_number(parsed):
            raise ValueError("not a valid phone number")
        return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return normalize_e164(raw)


def import_csv(account_id: str, body: ImportBody) -> dict[str, Any]:
    reader = csv.reader(io.StringIO(body.csv.lstrip("\ufeff")))
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        raise invalid("csv", "no header row") from None
    cols = [_COLUMNS.get(h.strip().casefold()) for h in header]
    if "name" not in cols or "phone" not in cols:
        raise invalid("csv", "the header must name the columns name and phone (tags and notes are optional)")
    ignored = [h for h, c in zip(header, cols) if c is None]
    rejected: list[dict[str, Any]] = []
    good: list[tuple[int, ContactIn]] = []
    seen: dict[str, int] = {}
    total = 0
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            total += 1
            if total > MAX_IMPORT_ROWS:
                raise invalid("csv", f"at most {MAX_IMPORT_ROWS} rows per import")
            line = reader.line_num
            raw = {c: (row[i] if i < len(row) else "") for i, c in enumerate(cols) if c}
            fail = {"row": total, "line": line, "name": raw.get("name"), "phone": raw.get("phone")}
            try:
                phone = _row_phone(raw.get("phone", ""), body.default_country)
            except ValueError as exc:
                rejected.append({**fail, "field": "phone", "reason": f"phone: {exc}"})
                continue
            tags = [t for t in (raw.get("tags") or "").replace("|", ";").split(";") if t.strip()]
            try:
                item = ContactIn.model_validate({"name": raw.get("name", ""), "phone": phone, "tags": tags,
                                                 "notes": (raw.get("notes") or "").strip() or None})
            except ValidationError as exc:
                err = exc.errors()[0]
                field = str(err["loc"][0]) if err["loc"] else "row"
                msg = err["msg"].removeprefix("Value error, ")
                rejected.append({**fail, "field": field, "reason": f"{field}: {msg}"})
                continue
            if item.phone in seen:
                rejected.append({**fail, "field": "phone",
                                 "reason": f"phone: the same number is on row {seen[item.phone]}"})
                continue
            seen[item.phone] = total
            good.append((total, item))
    except csv.Error as exc:
        raise invalid("csv", f"line {reader.line_num}: {exc}") from None
    imported = updated = 0
    now = now_ms()
    with write_tx():
        existing = {}
        phones = [it.phone for _, it in good]
        for i in range(0, len(phones), 500):
            for c in Contact.select().where((Contact.account == account_id) & (Contact.phone << phones[i:i + 500])):
                existing[c.phone] = c
        for n, it in good:
            c = existing.get(it.phone)
            if c is not None and body.on_duplicate == "skip":
                rejected.append({"row": n, "name": it.name, "phone": it.phone, "field": "phone",
                                 "reason": f"phone: already in your contacts ({c.id})"})
                continue
            if c is None:
                c = Contact(id=new_id("ct"), account=account_id, created_at=now, updated_at=now)
                _fill(c, it.name, it.phone, it.tags, it.notes)
                c.save(force_insert=True)
                imported += 1
            else:
                _fill(c, it.name, it.phone, it.tags, it.notes)
                c.updated_at = now
                c.save()
                updated += 1
            _set_tags(c, it.tags)
    rejected.sort(key=lambda r: r["row"])
    return {"total_rows": total, "imported": imported, "updated": updated, "rejected_count": len(rejected),
            "rejected": rejected, "ignored_columns": ignored}


def export_csv(account_id: str, tag: str | None) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["name", "phone", "tags", "notes"])
    for c in search(account_id, None, tag).iterator():
        w.writerow([c.name, c.phone, ";".join(c.tags or []), c.notes or ""])
    return out.getvalue()


# -- API -------------------------------------------------------------------------------------
bp = APIBlueprint("contacts", __name__, url_prefix="/api/v1", abp_tags=[Tag(name="Contacts")],
                  abp_security=SECURITY)


def _get(account: Any, contact_id: str) -> Contact:
    c = Contact.get_or_none((Contact.id == contact_id) & (Contact.account == account.id))
    if c is None:
        raise ApiError("NOT_FOUND", f"no contact {contact_id}")
    return c


@bp.post("/contacts", responses={201: None})
def create_contact(body: ContactIn):
    """Add a contact (name, E.164 phone, tags, notes). The phone is unique in your directory."""
    account = current_account()
    return envelope(view(create(account.id, body)), 201)


@bp.get("/contacts")
def list_contacts(query: ContactQuery):
    """Your contacts by name; ``q`` searches names (any script, accents ignored) or any part of a number."""
    account = current_account()
    rows, total, more = page_of(search(account.id, query.q, query.tag), query.page, query.limit)
    return envelope({"contacts": [view(c) for c in rows], "page": query.page, "limit": query.limit,
                     "total": total, "has_more": more})


@bp.get("/contacts/export", responses={200: {"description": "The contacts as CSV (name,phone,tags,notes)",
                                               "content": {"text/csv": {"schema": {"type": "string"}}}}})
def export_contacts(query: ExportQuery):
    """All your contacts (or those with ``tag``) as CSV: name, phone, tags (``;``-separated), notes."""
    account = current_account()
    text = export_csv(account.id, query.tag)
    return Response(text, mimetype="text/csv", headers={
        "Content-Disposition": 'attachment; filename="contacts.csv"'})


@bp.post("/contacts/import")
def import_contacts(body: ImportBody):
    """Import CSV (JSON body ``{"csv": "..."}``); every rejected row comes back with its reason."""
    account = current_account()
    return envelope(import_csv(account.id, body))


@bp.get("/contacts/<contact_id>")
def get_contact(path: ContactPath):
    """One contact."""
    return envelope(view(_get(current_account(), path.contact_id)))


@bp.patch("/contacts/<contact_id>")
def update_contact(path: ContactPath, body: ContactPatch):
    """Change some fields of a contact; ``tags`` replaces the list, ``notes: null`` clears them."""
    account = current_account()
    fields = body.model_fields_set
    if not fields:
        raise invalid("body", "give at least one of name, phone, tags, notes")
    for f in ("name", "phone", "tags"):
        if f in fields and getattr(body, f) is None:
            raise invalid(f, "cannot be null")
    with write_tx():
        c = _get(account, path.contact_id)
        phone = body.phone if "phone" in fields else c.phone
        if phone != c.phone:
            existing = _duplicate(account.id, phone, exclude=c.id)
            if existing is not None:
                raise _conflict(existing)
        tags = body.tags if "tags" in fields else c.tags
        _fill(c, body.name if "name" in fields else c.name, phone, tags,
              body.notes if "notes" in fields else c.notes)
        c.updated_at = now_ms()
        c.save()
        if "tags" in fields:
            _set_tags(c, tags)
    return envelope(view(c))


@bp.delete("/contacts/<contact_id>")
def delete_contact(path: ContactPath):
    """Remove a contact."""
    account = current_account()
    with write_tx():
        c = _get(account, path.contact_id)
        ContactTag.delete().where(ContactTag.contact == c.id).execute()
        c.delete_instance()
    return envelope({"id": c.id, "deleted": True})


def init(app: Any, rt: Any) -> None:
    app.register_api(bp)
    rt.tag_recipients = numbers_with_tags
