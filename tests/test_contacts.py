"""The recipient directory end to end: CRUD, search in four scripts and by partial numbers, tags,
list sends by tag, CSV import with bad rows, CSV export round trip."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from typing import Any

from conftest import wait_for

PK = "+923001234567"


def error_of(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["ok"] is False and body["error"]["code"] == code, body
    return body["error"]


def names(api: Any, q: str, **params: Any) -> list[str]:
    r = api.get("/contacts", params={"q": q, **params})
    assert r.status_code == 200, r.text
    return [c["name"] for c in r.json()["data"]["contacts"]]


def test_contact_crud_and_unique_numbers(sandbox):
    api = sandbox.api()
    r = api.post("/contacts", json={"name": "  Ayesha   Khan ", "phone": PK, "tags": ["VIP", "vip", "Lahore"],
                                    "notes": "prefers Urdu"})
    assert r.status_code == 201, r.text
    c = r.json()["data"]
    assert c["id"].startswith("ct_") and c["name"] == "Ayesha Khan" and c["phone"] == PK
    assert c["tags"] == ["vip", "lahore"] and c["notes"] == "prefers Urdu"
    assert api.get(f"/contacts/{c['id']}").json()["data"] == c
    err = error_of(api.post("/contacts", json={"name": "Someone", "phone": PK}), 409, "CONFLICT")
    assert err["field"] == "phone" and err["contact_id"] == c["id"]
    for bad, field in (({"name": "X", "phone": "+1234567890"}, "phone"), ({"phone": "+923001234568"}, "name"),
                       ({"name": "   ", "phone": "+923001234568"}, "name"),
                       ({"name": "X", "phone": "+923001234568", "tags": ["a;b"]}, "tags[0]"),
                       ({"name": "X", "phone": "+923001234568", "colour": "red"}, "colour"),
                       ({"name": "X", "phone": "+923001234568", "tags": "vip"}, "tags")):
        assert error_of(api.post("/contacts", json=bad), 400, "INVALID_REQUEST")["field"] == field
    other = api.post("/contacts", json={"name": "Bilal", "phone": "+923001234568"}).json()["data"]
    r = api.patch(f"/contacts/{c['id']}", json={"tags": ["karachi"], "notes": None})
    assert r.status_code == 200 and r.json()["data"]["tags"] == ["karachi"] and r.json()["data"]["notes"] is None
    assert r.json()["data"]["name"] == "Ayesha Khan"
    assert error_of(api.patch(f"/contacts/{other['id']}", json={"phone": PK}), 409, "CONFLICT")["field"] == "phone"
    assert error_of(api.patch(f"/contacts/{other['id']}", json={}), 400, "INVALID_REQUEST")["field"] == "body"
    assert error_of(api.patch(f"/contacts/{other['id']}", json={"name": None}), 400,
                    "INVALID_REQUEST")["field"] == "name"
    assert api.get("/contacts", params={"tag": "karachi"}).json()["data"]["total"] == 1
    assert api.get("/contacts", params={"tag": "vip"}).json()["data"]["total"] == 0
    assert error_of(api.get("/contacts", params={"tag": "a;b"}), 400, "INVALID_REQUEST")["field"] == "tag"
    assert error_of(api.get("/contacts/export", params={"tag": "a;b"}), 400, "INVALID_REQUEST")["field"] == "tag"
    error_of(api.put("/contacts", json={}), 405, "METHOD_NOT_ALLOWED")
    assert api.delete(f"/contacts/{c['id']}").json()["data"] == {"id": c["id"], "deleted": True}
    error_of(api.get(f"/contacts/{c['id']}"), 404, "NOT_FOUND")
    error_of(api.patch(f"/contacts/{c['id']}", json={"notes": "x"}), 404, "NOT_FOUND")
    error_of(api.delete(f"/contacts/{c['id']}"), 404, "NOT_FOUND")
    # The number is free again once deleted.
    assert api.post("/contacts", json={"name": "Ayesha", "phone": PK}).status_code == 201


# Names in the four scripts, with the variants people actually type.
CONTACTS = [
    ("José Álvarez", "+923001110001"),
    ("\u0645\u064f\u062d\u0645\u0651\u062f \u0639\u0644\u06cc", "+923001110002"),  # مُحمّد علی (harakat, Urdu yeh)
    ("\u0622\u0645\u0646\u06c1 \u0628\u06cc\u06af\u0645", "+923001110003"),        # آمنہ بیگم
    ("\u0958\u093e\u0938\u093f\u092e \u0930\u093e\u0908", "+9779841110004"),       # क़ासिम राई (precomposed qa)
    ("\u0938\u0941\u092e\u0928 \u0936\u094d\u0930\u0947\u0937\u094d\u0920", "+9779841110005"),  # सुमन श्रेष्ठ
    ("\u09b8\u09c1\u09ae\u09be\u0987\u09df\u09be \u0986\u0995\u09cd\u09a4\u09be\u09b0", "+8801711110006"),  # সুমাইয়া আক্তার
    ("\u09b0\u09ac\u09c0\u09a8\u09cd\u09a6\u09cd\u09b0\u09a8\u09be\u09a5 \u09a0\u09be\u0995\u09c1\u09b0",
     "+8801711110007"),  # রবীন্দ্রনাথ ঠাকুর
]


def test_search_by_name_is_case_and_accent_insensitive_in_four_scripts(sandbox):
    api = sandbox.api()
    for name, phone in CONTACTS:
        assert api.post("/contacts", json={"name": name, "phone": phone}).status_code == 201
    jose, muhammad, amna, qasim, suman, sumaiya, rabindranath = [n for n, _ in CONTACTS]
    # Latin: accents and case.
    assert names(api, "jose") == [jose]
    assert names(api, "ÁLVAREZ") == [jose]
    assert names(api, "alvarez") == [jose]
    # Urdu: without harakat; Arabic-keyboard yeh (ي) and heh (ه); plain alef for alef madda.
    assert names(api, "\u0645\u062d\u0645\u062f") == [muhammad]
    assert names(api, "\u0639\u0644\u064a") == [muhammad]
    assert names(api, "\u0627\u0645\u0646\u0647") == [amna]
    # Nepali: with or without the nukta, precomposed or not; a surname.
    assert names(api, "\u0915\u093e\u0938\u093f\u092e") == [qasim]
    assert names(api, "\u0915\u093c\u093e\u0938\u093f\u092e") == [qasim]
    assert names(api, "\u0936\u094d\u0930\u0947\u0937\u094d\u0920") == [suman]
    # Bengali: য় typed as য + nukta finds the precomposed letter; part of a name.
    assert names(api, "\u09b8\u09c1\u09ae\u09be\u0987\u09af\u09bc\u09be") == [sumaiya]
    assert names(api, "\u09a0\u09be\u0995\u09c1") == [rabindranath]
    assert names(api, "nobody") == []


def test_search_by_any_part_of_the_number_with_or_without_plus_and_spaces(sandbox):
    api = sandbox.api()
    for name, phone in CONTACTS:
        api.post("/contacts", json={"name": name, "phone": phone})
    jose = CONTACTS[0][0]
    for q in ("+923001110001", "923001110001", "+92 300 111 0001", "300-111-0001", "0300 1110001",
              "1110001", "(0300) 111", "\u06f0\u06f3\u06f0\u06f0\u06f1\u06f1\u06f1\u06f0\u06f0\u06f0\u06f1"):
        assert jose in names(api, q), q
    assert sorted(names(api, "+977")) == sorted(n for n, p in CONTACTS if p.startswith("+977"))
    assert names(api, "\u09ee\u09ee\u09e6\u09e7\u09ed\u09e7\u09e7\u09e7\u09e7\u09e6\u09e6\u09e6\u09ed") == [CONTACTS[6][0]]
    assert names(api, "5550199") == []
    page = api.get("/contacts", params={"q": "+92", "limit": 2, "page": 1}).json()["data"]
    assert page["total"] == 3 and page["has_more"] is True and len(page["contacts"]) == 2
    page2 = api.get("/contacts", params={"q": "+92", "limit": 2, "page": 2}).json()["data"]
    assert page2["has_more"] is False and len(page2["contacts"]) == 1
    assert error_of(api.get("/contacts", params={"limit": 0}), 400, "INVALID_REQUEST")["field"] == "limit"
    assert error_of(api.get("/contacts", params={"q": "x" * 201}), 400, "INVALID_REQUEST")["field"] == "q"


def test_list_send_to_the_contacts_with_tags(sandbox):
    api = sandbox.api()
    api.post("/contacts", json={"name": "A", "phone": "+923011110001", "tags": ["vip"]})
    api.post("/contacts", json={"name": "B", "phone": "+923011110002", "tags": ["vip", "lahore"]})
    api.post("/contacts", json={"name": "C", "phone": "+923011110003", "tags": ["karachi"]})
    r = api.post("/sms/list", json={"tags": ["VIP"], "body": "Sale today"})
    assert r.status_code == 202, r.text
    data = r.json()["data"]
    assert data["accepted"] == 2 and data["total"] == 2
    msgs = api.get(f"/sms/batch/{data['batch_id']}/messages").json()["data"]["items"]
    assert sorted(m["to"] for m in msgs) == ["+923011110001", "+923011110002"]
    # Tags and numbers together, duplicates removed.
    r = api.post("/sms/list", json={"tags": ["lahore", "karachi"], "numbers": ["+923011110002"], "body": "x"})
    assert r.json()["data"]["accepted"] == 2 and r.json()["data"]["duplicates_removed"] == 1
    assert error_of(api.post("/sms/list", json={"tags": ["nobody"], "body": "x"}), 400,
                    "INVALID_REQUEST")["field"] == "tags"
    assert error_of(api.post("/sms/list", json={"body": "x"}), 400, "INVALID_REQUEST")["field"] == "numbers"
    wait_for(lambda: api.get(f"/sms/batch/{data['batch_id']}").json()["data"]["status"] == "completed",
             message="the tagged list send to complete")


IMPORT = (
    "\ufeffName,Phone,Tags,Notes,Branch\r\n"
    "Ali Raza,+92 300 1112222,VIP;lahore,\"first, best\nclient\",x\r\n"
    "Bad Number,+92 12,,,\r\n"
    ",+923001113333,,,\r\n"
    "Ali Again,+923001112222,,,\r\n"
    "Sana,0300 1114444,karachi|vip,,\r\n"
    "Existing,+923001115555,,,\r\n"
    f"Long tag,+923001116666,{'t' * 51},,\r\n"
    "\r\n"
    "\u0622\u0645\u0646\u06c1,+923001117777,\u0644\u0627\u06c1\u0648\u0631,,\r\n"
)


def test_csv_import_reports_each_rejected_row_and_why(sandbox):
    api = sandbox.api()
    existing = api.post("/contacts", json={"name": "Old", "phone": "+923001115555"}).json()["data"]
    r = api.post("/contacts/import", json={"csv": IMPORT, "default_country": "PK"})
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert d["total_rows"] == 8 and d["imported"] == 3 and d["updated"] == 0 and d["ignored_columns"] == ["Branch"]
    rejected = {row["row"]: row for row in d["rejected"]}
    assert sorted(rejected) == [2, 3, 4, 6, 7] and d["rejected_count"] == 5
    assert rejected[2]["field"] == "phone" and "phone:" in rejected[2]["reason"]
    assert rejected[3]["field"] == "name"
    assert rejected[4]["field"] == "phone" and "row 1" in rejected[4]["reason"]
    assert rejected[6]["field"] == "phone" and existing["id"] in rejected[6]["reason"]
    assert rejected[7]["field"] == "tags"
    assert rejected[2]["line"] == 4  # row 1 spans lines 2-3 (a quoted newline)
    ali = api.get("/contacts", params={"q": "ali raza"}).json()["data"]["contacts"][0]
    assert ali["phone"] == "+923001112222" and ali["tags"] == ["vip", "lahore"] and ali["notes"] == "first, best\nclient"
    sana = api.get("/contacts", params={"q": "0300 1114444"}).json()["data"]["contacts"][0]
    assert sana["name"] == "Sana" and sana["tags"] == ["karachi", "vip"]
    # Updating instead of skipping numbers already in the directory.
    r = api.post("/contacts/import", json={"csv": "name,number\nRenamed,+923001115555\n", "on_duplicate": "update"})
    assert r.json()["data"]["updated"] == 1
    assert api.get(f"/contacts/{existing['id']}").json()["data"]["name"] == "Renamed"


def test_csv_import_refuses_unusable_files(sandbox):
    api = sandbox.api()
    for body, field in (({"csv": "name,notes\nA,B\n"}, "csv"), ({"csv": 42}, "csv"), ({"csv": ""}, "csv"),
                        ({"csv": "name,phone\n", "default_country": "Pakistan"}, "default_country"),
                        ({"csv": "name,phone\n", "on_duplicate": "merge"}, "on_duplicate")):
        assert error_of(api.post("/contacts/import", json=body), 400, "INVALID_REQUEST")["field"] == field
    big = "name,phone\n" + "".join(f"n,+92301{i:07d}\n" for i in range(10_001))
    err = error_of(api.post("/contacts/import", json={"csv": big}), 400, "INVALID_REQUEST")
    assert err["field"] == "csv" and "10000" in err["message"]
    assert api.get("/contacts").json()["data"]["total"] == 0  # nothing half-written


def test_csv_export_round_trips_into_another_account(sandbox):
    api = sandbox.api()
    for name, phone in CONTACTS:
        api.post("/contacts", json={"name": name, "phone": phone, "tags": ["family"] if "+88" in phone else [],
                                    "notes": "line1\nline2, with comma"})
    r = api.get("/contacts/export")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in r.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8"))))
    assert {(x["name"], x["phone"]) for x in rows} == set(CONTACTS)
    tagged = api.get("/contacts/export", params={"tag": "family"}).content.decode()
    assert len(list(csv.DictReader(io.StringIO(tagged)))) == 2
    created = json.loads(subprocess.run(
        [sys.executable, "-m", "relaybox.cli", "account", "create", "Copy", "--enable-api", "--json",
         "--data-dir", str(sandbox.data_dir)], env=sandbox.env, capture_output=True, text=True, timeout=60, check=False).stdout)
    other = sandbox.api(key=created["api_key"])
    d = other.post("/contacts/import", json={"csv": r.content.decode()}).json()["data"]
    assert d["imported"] == len(CONTACTS) and d["rejected"] == []

    def strip(c: dict[str, Any]) -> tuple[Any, ...]:
        return c["name"], c["phone"], tuple(c["tags"]), c["notes"]

    mine = {strip(c) for c in api.get("/contacts", params={"limit": 100}).json()["data"]["contacts"]}
    theirs = {strip(c) for c in other.get("/contacts", params={"limit": 100}).json()["data"]["contacts"]}
    assert mine == theirs and len(mine) == len(CONTACTS)
