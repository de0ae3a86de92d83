"""Ready-to-copy code for the developer page: send SMS, send OTP, verify OTP, message status,
in cURL, PHP, Laravel, Node, Axios, Python, Flutter, Kotlin, Java, C#, Go and Ruby.

Every snippet uses the box's real base URL and reads the key from the ``RELAYBOX_API_KEY``
environment variable (keys do not belong in source code). The request bodies are written once
(``OPERATIONS``) and rendered into each language's own literal syntax, so all twelve send the
same fields. The tests run the cURL, Python and Node snippets against a live server.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LANGUAGES: list[tuple[str, str]] = [
    ("curl", "cURL"), ("php", "PHP"), ("laravel", "Laravel"), ("node", "Node"), ("axios", "Axios"),
    ("python", "Python"), ("flutter", "Flutter"), ("kotlin", "Kotlin"), ("java", "Java"), ("csharp", "C#"),
    ("go", "Go"), ("ruby", "Ruby"),
]
ENV_KEY = "RELAYBOX_API_KEY"
EXAMPLE_MESSAGE_ID = "req_01HV6Y2K3M4N5P6Q7R8S9T0VWX"
EXAMPLE_OTP_ID = "otp_01HV6Y2K3M4N5P6Q7R8S9T0VWX"
EXAMPLE_CODE = "123456"


@dataclass(frozen=True)
class Operation:
    id: str
    method: str
    path: str
    body: dict[str, Any] | None


OPERATIONS: list[Operation] = [
    Operation("send_sms", "POST", "/sms/send",
              {"to": "+923001234567", "body": "Your order 1234 has shipped.", "metadata": {"order_id": "1234"}}),
    Operation("send_otp", "POST", "/otp/send",
              {"to": "+923001234567", "purpose": "login", "locale": "en", "app_name": "MyShop"}),
    Operation("verify_otp", "POST", "/otp/verify", {"otp_id": EXAMPLE_OTP_ID, "code": EXAMPLE_CODE}),
    Operation("message_status", "GET", f"/sms/{EXAMPLE_MESSAGE_ID}", None),
]


# -- literals ------------------------------------------------------------------------------------
def _q(s: str) -> str:
    """A double-quoted string literal valid in JSON, JS, Python, Go, Java, Kotlin, C#, Dart, Ruby
    (the example values hold no ``$``, ``#{`` or backslashes, so no language interpolates them)."""
    return json.dumps(s, ensure_ascii=False)


UNIT = {"python": "    ", "go": "\t", "csharp": "    ", "kotlin": "    ", "java": "    "}


def _lit(value: Any, style: str, indent: int = 0) -> str:
    unit = UNIT.get(style, "  ")
    pad, inner = unit * indent, unit * (indent + 1)
    if isinstance(value, dict):
        if style == "php":
            items = [f"{inner}'{k}' => {_lit(v, style, indent + 1)}," for k, v in value.items()]
            return "[\n" + "\n".join(items) + f"\n{pad}]"
        if style == "python":
            items = [f"{inner}{_q(k)}: {_lit(v, style, indent + 1)}," for k, v in value.items()]
            return "{\n" + "\n".join(items) + f"\n{pad}}}"
        if style == "ruby":
            items = [f"{inner}{k}: {_lit(v, style, indent + 1)}" for k, v in value.items()]
            return "{\n" + ",\n".join(items) + f"\n{pad}}}"
        if style == "go":
            items = [f"{inner}{_q(k)}: {_lit(v, style, indent + 1)}," for k, v in value.items()]
            return "map[string]any{\n" + "\n".join(items) + f"\n{pad}}}"
        if style == "csharp":
            items = [f"{inner}{k} = {_lit(v, style, indent + 1)}" for k, v in value.items()]
            return "new\n" + pad + "{\n" + ",\n".join(items) + f"\n{pad}}}"
        if style == "dart":
            items = [f"{inner}'{k}': {_lit(v, style, indent + 1)}" for k, v in value.items()]
            return "{\n" + ",\n".join(items) + f",\n{pad}}}"
        # JavaScript object literal
        items = [f"{inner}{k}: {_lit(v, style, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f",\n{pad}}}"
    if isinstance(value, str):
        if style in ("php", "dart"):
            return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return _q(value)
    return json.dumps(value)


def _json_text(body: dict[str, Any]) -> str:
    return json.dumps(body, ensure_ascii=False, indent=2)


# -- one function per language ----------------------------------------------------------------------
def _curl(url: str, op: Operation) -> str:
    lines = [f'curl -X {op.method} "{url}" \\', f'  -H "X-API-Key: ${ENV_KEY}"']
    if op.body is not None:
        lines[-1] += " \\"
        lines.append('  -H "Content-Type: application/json" \\')
        lines.append("  -d '" + _json_text(op.body) + "'")
    return "\n".join(lines)


def _php(url: str, op: Operation) -> str:
    out = ["<?php", f"$ch = curl_init({_lit(url, 'php')});",
           "curl_setopt_array($ch, [",
           "  CURLOPT_RETURNTRANSFER => true,",
           f"  CURLOPT_CUSTOMREQUEST => '{op.method}',"]
    headers = [f"'X-API-Key: ' . getenv('{ENV_KEY}')"]
    if op.body is not None:
        headers.append("'Content-Type: application/json'")
        out.append(f"  CURLOPT_POSTFIELDS => json_encode({_lit(op.body, 'php', 1)}),")
    out.append("  CURLOPT_HTTPHEADER => [" + ", ".join(headers) + "],")
    out += ["]);", "$response = json_decode(curl_exec($ch), true);",
            "$status = curl_getinfo($ch, CURLINFO_RESPONSE_CODE);", "curl_close($ch);",
            "echo $status, ' ', json_encode($response, JSON_PRETTY_PRINT), PHP_EOL;"]
    return "\n".join(out)


def _laravel(url: str, op: Operation) -> str:
    call = f"->{op.method.lower()}({_lit(url, 'php')}"
    call += f", {_lit(op.body, 'php', 1)})" if op.body is not None else ")"
    return "\n".join([
        "use Illuminate\\Support\\Facades\\Http;", "",
        f"// config/services.php: 'relaybox' => ['key' => env('{ENV_KEY}')]",
        "$response = Http::withHeaders(['X-API-Key' => config('services.relaybox.key')])",
        "    ->acceptJson()",
        "    " + call + ";", "",
        "$response->throw();",
        "$data = $response->json('data');",
    ])


def _node(url: str, op: Operation) -> str:
    out = ["// Node 18+ (ES module, e.g. relaybox.mjs)", f"const resp = await fetch({_q(url)}, {{",
           f"  method: {_q(op.method)},", "  headers: {", f"    \"X-API-Key\": process.env.{ENV_KEY},"]
    if op.body is not None:
        out.append('    "Content-Type": "application/json",')
    out.append("  },")
    if op.body is not None:
        out.append(f"  body: JSON.stringify({_lit(op.body, 'js', 1)}),")
    out += ["});", "const result = await resp.json();", "console.log(resp.status, JSON.stringify(result, null, 2));",
            "if (!resp.ok) process.exit(1);"]
    return "\n".join(out)


def _axios(url: str, op: Operation) -> str:
    cfg = f"{{ headers: {{ \"X-API-Key\": process.env.{ENV_KEY} }} }}"
    if op.body is not None:
        req = f"await axios.{op.method.lower()}({_q(url)}, {_lit(op.body, 'js')}, {cfg});"
    else:
        req = f"await axios.{op.method.lower()}({_q(url)}, {cfg});"
    return "\n".join(["import axios from \"axios\";", "", "const { data } = " + req,
                      "console.log(data.data);"])


def _python(url: str, op: Operation) -> str:
    out = ["import os", "", "import requests", "", f"resp = requests.{op.method.lower()}(", f"    {_q(url)},",
           f"    headers={{\"X-API-Key\": os.environ[{_q(ENV_KEY)}]}},"]
    if op.body is not None:
        out.append(f"    json={_lit(op.body, 'python', 1)},")
    out += ["    timeout=30,", ")", "print(resp.status_code, resp.json())", "resp.raise_for_status()"]
    return "\n".join(out)


def _flutter(url: str, op: Operation) -> str:
    out = ["import 'dart:convert';", "import 'package:http/http.dart' as http;", "",
           f"// flutter run --dart-define={ENV_KEY}=...  (in production, call relaybox from your server)",
           f"const apiKey = String.fromEnvironment('{ENV_KEY}');", "",
           "Future<Map<String, dynamic>> call() async {",
           f"  final resp = await http.{op.method.lower()}(", f"    Uri.parse('{url}'),", "    headers: {",
           "      'X-API-Key': apiKey,"]
    if op.body is not None:
        out.append("      'Content-Type': 'application/json',")
    out.append("    },")
    if op.body is not None:
        out.append(f"    body: jsonEncode({_lit(op.body, 'dart', 2)}),")
    out += ["  );", "  final result = jsonDecode(resp.body) as Map<String, dynamic>;",
            "  if (resp.statusCode >= 300) throw Exception(result['error']);", "  return result['data'];", "}"]
    return "\n".join(out)


def _kotlin(url: str, op: Operation) -> str:
    out = ["import okhttp3.MediaType.Companion.toMediaType", "import okhttp3.OkHttpClient", "import okhttp3.Request",
           "import okhttp3.RequestBody.Companion.toRequestBody", "", "fun main() {", "    val client = OkHttpClient()"]
    if op.body is not None:
        out += ['    val json = """'] + ["        " + ln for ln in _json_text(op.body).splitlines()] + ['    """.trimIndent()']
    out += ["    val request = Request.Builder()", f"        .url({_q(url)})",
            f"        .header(\"X-API-Key\", System.getenv(\"{ENV_KEY}\"))"]
    if op.body is not None:
        out.append(f"        .{op.method.lower()}(json.toRequestBody(\"application/json\".toMediaType()))")
    out += ["        .build()", "    client.newCall(request).execute().use { resp ->",
            "        println(\"${resp.code} ${resp.body?.string()}\")", "    }", "}"]
    return "\n".join(out)


def _java(url: str, op: Operation) -> str:
    i = "        "
    out = ["import java.net.URI;", "import java.net.http.HttpClient;", "import java.net.http.HttpRequest;",
           "import java.net.http.HttpResponse;", "", "public class Relaybox {",
           "    public static void main(String[] args) throws Exception {",
           i + "HttpClient client = HttpClient.newHttpClient();"]
    if op.body is not None:
        out += [i + 'String json = """'] + [i + ln for ln in _json_text(op.body).splitlines()] + [i + '""";']
    out += [i + "HttpRequest request = HttpRequest.newBuilder()", i + f"    .uri(URI.create({_q(url)}))",
            i + f"    .header(\"X-API-Key\", System.getenv(\"{ENV_KEY}\"))"]
    if op.body is not None:
        out += [i + "    .header(\"Content-Type\", \"application/json\")",
                i + "    .POST(HttpRequest.BodyPublishers.ofString(json))"]
    else:
        out.append(i + "    .GET()")
    out += [i + "    .build();",
            i + "HttpResponse<String> response = client.send(request, HttpResponse.BodyHandlers.ofString());",
            i + "System.out.println(response.statusCode() + \" \" + response.body());", "    }", "}"]
    return "\n".join(out)


def _csharp(url: str, op: Operation) -> str:
    out = ["using System.Net.Http.Json;", "", "using var client = new HttpClient();",
           f"client.DefaultRequestHeaders.Add(\"X-API-Key\", Environment.GetEnvironmentVariable(\"{ENV_KEY}\"));"]
    if op.body is not None:
        out.append(f"var response = await client.PostAsJsonAsync({_q(url)}, {_lit(op.body, 'csharp')});")
    else:
        out.append(f"var response = await client.GetAsync({_q(url)});")
    out += ["Console.WriteLine($\"{(int)response.StatusCode} {await response.Content.ReadAsStringAsync()}\");",
            "response.EnsureSuccessStatusCode();"]
    return "\n".join(out)


def _go(url: str, op: Operation) -> str:
    out = ["package main", "", "import (", "\t\"bytes\"", "\t\"encoding/json\"", "\t\"fmt\"", "\t\"io\"",
           "\t\"net/http\"", "\t\"os\"", ")", "", "func main() {"]
    if op.body is not None:
        body = _lit(op.body, "go", 1)
        out += [f"\tpayload, _ := json.Marshal({body})",
                f"\treq, _ := http.NewRequest({_q(op.method)}, {_q(url)}, bytes.NewReader(payload))",
                "\treq.Header.Set(\"Content-Type\", \"application/json\")"]
    else:
        out += [f"\treq, _ := http.NewRequest({_q(op.method)}, {_q(url)}, nil)", "\t_ = json.Marshal",
                "\t_ = bytes.NewReader"]
    out += [f"\treq.Header.Set(\"X-API-Key\", os.Getenv(\"{ENV_KEY}\"))",
            "\tresp, err := http.DefaultClient.Do(req)", "\tif err != nil {", "\t\tpanic(err)", "\t}",
            "\tdefer resp.Body.Close()", "\tout, _ := io.ReadAll(resp.Body)",
            "\tfmt.Println(resp.StatusCode, string(out))", "}"]
    if op.body is None:  # keep the imports honest: no unused json/bytes when there is no body
        out = [ln for ln in out if ln not in ("\t\"bytes\"", "\t\"encoding/json\"", "\t_ = json.Marshal",
                                              "\t_ = bytes.NewReader")]
    return "\n".join(out)


def _ruby(url: str, op: Operation) -> str:
    out = ["require \"net/http\"", "require \"json\"", "", f"uri = URI({_q(url)})",
           f"req = Net::HTTP::{op.method.capitalize()}.new(uri)",
           f"req[\"X-API-Key\"] = ENV.fetch(\"{ENV_KEY}\")"]
    if op.body is not None:
        out += ["req[\"Content-Type\"] = \"application/json\"", f"req.body = {_lit(op.body, 'ruby')}.to_json"]
    out += ["res = Net::HTTP.start(uri.hostname, uri.port, use_ssl: uri.scheme == \"https\") { |http| http.request(req) }",
            "puts res.code, JSON.parse(res.body)"]
    return "\n".join(out)


RENDER: dict[str, Callable[[str, Operation], str]] = {
    "curl": _curl, "php": _php, "laravel": _laravel, "node": _node, "axios": _axios, "python": _python,
    "flutter": _flutter, "kotlin": _kotlin, "java": _java, "csharp": _csharp, "go": _go, "ruby": _ruby,
}


def snippets(api_base: str) -> dict[str, dict[str, str]]:
    """``{operation id: {language id: code}}`` for the box at ``api_base`` (…/api/v1)."""
    base = api_base.rstrip("/")
    return {op.id: {lang: RENDER[lang](base + op.path, op) for lang, _label in LANGUAGES} for op in OPERATIONS}


# -- webhooks -------------------------------------------------------------------------------------
VERIFY: dict[str, str] = {
    "python": '''# pip install standardwebhooks flask
import os

from flask import Flask, request
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

app = Flask(__name__)
wh = Webhook(os.environ["RELAYBOX_WEBHOOK_SECRET"])  # whsec_... from the admin page


@app.post("/webhooks/status")
def status():
    try:
        event = wh.verify(request.get_data(), dict(request.headers))
    except WebhookVerificationError:
        return "bad signature", 400
    print(event["event"], event.get("message_id"), event.get("status"))
    return "", 204''',
    "node": '''// Node 18+: verify a relaybox webhook (Standard Webhooks) with the built-in crypto module.
import crypto from "node:crypto";

export function verifyWebhook(rawBody, headers, secret = process.env.RELAYBOX_WEBHOOK_SECRET) {
  const id = headers["webhook-id"];
  const timestamp = headers["webhook-timestamp"];
  const signatures = (headers["webhook-signature"] || "").split(" ");
  if (!id || !timestamp || Math.abs(Date.now() / 1000 - Number(timestamp)) > 300) return false;
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  const expected = crypto.createHmac("sha256", key).update(`${id}.${timestamp}.${rawBody}`).digest();
  return signatures.some((sig) => {
    const [version, value] = sig.split(",");
    const given = Buffer.from(value || "", "base64");
    return version === "v1" && given.length === expected.length && crypto.timingSafeEqual(given, expected);
  });
}''',
    "php": '''<?php
// Verify a relaybox webhook (Standard Webhooks) in plain PHP.
function verify_webhook(string $rawBody, array $headers, string $secret): bool {
    $id = $headers['webhook-id'] ?? '';
    $ts = $headers['webhook-timestamp'] ?? '';
    if ($id === '' || abs(time() - (int) $ts) > 300) return false;
    $key = base64_decode(preg_replace('/^whsec_/', '', $secret));
    $expected = base64_encode(hash_hmac('sha256', "$id.$ts.$rawBody", $key, true));
    foreach (explode(' ', $headers['webhook-signature'] ?? '') as $sig) {
        [$version, $value] = array_pad(explode(',', $sig, 2), 2, '');
        if ($version === 'v1' && hash_equals($expected, $value)) return true;
    }
    return false;
}''',
}
