"""`nyth`: the command line over a peer engine's API, and `nyth devnet` for a whole
network on one machine."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from nyth.errors import DecodeError
from nyth.peer_client import ApiError, PeerClient
from nyth.proto.identity import normalize_onion
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding

# Markdown: help paragraphs are rewrapped to the terminal (typer's "rich" mode keeps the
# docstrings' own line breaks, which made ragged lines at 80 columns).
HELP_STYLE: dict[str, Any] = {"no_args_is_help": True, "rich_markup_mode": "markdown"}
app = typer.Typer(help="Nyth: metadata-resistant messaging over Tor onion services.",
                  **HELP_STYLE)
profile_app = typer.Typer(help="Create, unlock and show your profile.", **HELP_STYLE)
contact_app = typer.Typer(help="Contacts and contact requests.", **HELP_STYLE)
group_app = typer.Typer(help="Groups on untrusted group servers.", **HELP_STYLE)
server_app = typer.Typer(help="Pinned servers (group servers, mailboxes).", **HELP_STYLE)
app.add_typer(profile_app, name="profile")
app.add_typer(contact_app, name="contact")
app.add_typer(group_app, name="group")
app.add_typer(server_app, name="server")

console = Console()
_state: dict[str, Any] = {}

ApiOpt = Annotated[str, typer.Option("--api", envvar="NYTH_API_URL", help="peer engine API URL")]
TokenOpt = Annotated[str | None, typer.Option("--token", envvar="NYTH_API_TOKEN",
                                              help="API bearer token")]
TokenFileOpt = Annotated[Path | None, typer.Option("--token-file", envvar="NYTH_API_TOKEN_FILE",
                                                   help="file holding the API token")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print raw JSON")]


@app.callback()
def main(api: ApiOpt = "http://127.0.0.1:8700", token: TokenOpt = None,
         token_file: TokenFileOpt = None, json_opt: JsonOpt = False) -> None:
    _state.update(api=api, token=token, token_file=token_file, json=json_opt)


def client() -> PeerClient:
    token = _state.get("token")
    if not token and _state.get("token_file"):
        token = Path(_state["token_file"]).read_text().strip()
    if not token:
        raise typer.BadParameter("give the API token with --token, --token-file or NYTH_API_TOKEN")
    return PeerClient(_state["api"], token)


def call(method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
    try:
        with client() as c:
            if method == "GET":
                return c.get(path, **params)
            if method == "PATCH":
                return c.request("PATCH", path, json=body or {})
            return c.post(path, body)
    except ApiError as exc:
        fail(f"error {exc.status}: {exc.message}", status=exc.status)
    except OSError as exc:
        fail(f"cannot reach the peer engine at {_state['api']}: {exc}")


def show(data: Any) -> None:
    console.print_json(json.dumps(data))


def as_json(flag: bool = False) -> bool:
    """Whether to print JSON: `nyth --json <command>`, or a command's own --json (which
    then holds for the errors it prints too)."""
    if flag:
        _state["json"] = True
    return bool(_state.get("json"))


def fail(message: str, *, status: int | None = None) -> NoReturn:
    """Stop with exit code 1 and say why: as JSON under --json, so a script parsing the
    output never meets text."""
    if _state.get("json"):
        show({"error": message, "status": status})
    else:
        console.print(f"[red]{t(message)}[/red]")
    raise typer.Exit(1)


# C0 controls but newline and tab, DEL, C1 controls, and the bidi overrides/isolates that
# can make text display in another order than it reads (U+202A-U+202E, U+2066-U+2069).
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def t(value: Any) -> str:
    """Text that came from someone else (a contact, a server, a reason quoting them),
    made safe to print: no terminal escape sequences, no Rich markup (a name like "[/]"
    would crash the table, "[green]delivered" would spoof a state)."""
    return escape(_UNPRINTABLE.sub("\N{REPLACEMENT CHARACTER}", str(value)))


def _when(ts: float | None) -> str:
    if not ts:
        return ""
    try:
        return datetime.datetime.fromtimestamp(ts).strftime("%H:%M:%S")
    except (ValueError, OverflowError, OSError):  # a sender's clock is theirs to set
        return "?"


def _state_text(row: dict[str, Any]) -> str:
    text = t(row["state"])
    if row.get("reason"):
        text += f" ({t(row['reason'])})"
    if row.get("next_retry_at"):
        text += f", next retry {_when(row['next_retry_at'])}"
    return text


# -- profile ---------------------------------------------------------------------------------
@profile_app.command("create")
def profile_create(name: str,
                   passphrase: Annotated[str, typer.Option(prompt=True, hide_input=True,
                                                           confirmation_prompt=True)]) -> None:
    """Create a profile (its keys are sealed with the passphrase)."""
    result = call("POST", "/v1/profile", {"name": name, "passphrase": passphrase})
    if as_json():
        show(result)
        return
    console.print(f"profile [bold]{t(result['name'])}[/bold]: {result['address']}")


@profile_app.command("unlock")
def profile_unlock(passphrase: Annotated[str, typer.Option(prompt=True, hide_input=True)]) -> None:
    """Unlock your profile with its passphrase."""
    result = call("POST", "/v1/profile/unlock", {"passphrase": passphrase})
    if as_json():
        show(result)
        return
    console.print(f"unlocked {result['address']}")


@profile_app.command("show")
def profile_show() -> None:
    """Your name, address and onion state."""
    result = call("GET", "/v1/profile")
    if as_json():
        show(result)
        return
    console.print(f"[bold]{t(result['name'])}[/bold] {result['address']} "
                  f"(onion: {t(result['onion_state'].get('state'))})")


@app.command()
def status() -> None:
    """Connection states with reasons: onion, contacts, group servers."""
    result = call("GET", "/v1/status")
    if as_json():
        show(result)
        return
    onion = result["onion"]
    console.print(f"onion: {t(onion.get('state'))} {t(onion.get('reason') or '')}")
    for name, section in (("contact", result["contacts"]), ("server", result["servers"])):
        for onion_id, st in section.items():
            console.print(f"{name} {t(onion_id[:16])}…: {t(st['state'])} {t(st.get('reason') or '')}")


# -- contacts --------------------------------------------------------------------------------

def _onion(text: str) -> str:
    """An onion as typed or pasted (any case, with or without .onion) in the one form the
    API takes; a malformed one is the user's error, shown before anything is sent."""
    try:
        return normalize_onion(text)
    except DecodeError as exc:
        raise typer.BadParameter(f"{text[:70]!r}: {exc}") from exc

@contact_app.command("add")
def contact_add(address: str, text: str = typer.Option("", help="a note with the request")) -> None:
    """Send a contact request.

    To a contact id (nyth1…: it reaches them even offline, through their mailbox) or to a
    bare onion address (P2P only)."""
    address = address.strip()
    body = ({"contact_id": address} if address.lower().startswith("nyth1")
            else {"onion": _onion(address)})
    result = call("POST", "/v1/contacts", {**body, "text": text})
    if as_json():
        show(result)
        return
    request = result.get("request") or {}
    console.print(f"{result['onion']}: {result['status']} {_state_text(request) if request else ''}")
    _warn_mailbox_change(result)


def _warn_mailbox_change(contact: dict[str, Any]) -> None:
    change = contact.get("mailbox_change")
    if change:
        console.print(f"[yellow]{contact['onion']}: a contact id names mailbox {t(change['to'])}"
                      f".onion, but {t(change['from'])}.onion is stored and stays in use. Only "
                      f"switch if the contact told you they moved: nyth contact mailbox-confirm "
                      f"{contact['onion']} {t(change['to'])}[/yellow]", soft_wrap=True)


def _rtt(latency: dict[str, Any] | None) -> str:
    """Recent round trips as "rtt p50/p95s (n)", or "" before the first."""
    if not latency or not latency.get("samples"):
        return ""
    return (f"rtt {_seconds(latency['p50_ms'])}/{_seconds(latency['p95_ms'])}s "
            f"({latency['samples']})")


def _contact_lines(c: dict[str, Any]) -> list[str]:
    """One contact in an 80-column terminal: name, status, connection and round trips;
    the full onion on a line of its own (what `nyth contact accept` takes); why the
    connection is in its state."""
    conn = c["connection"]
    # Padded before escaping: an escaped "[" is two characters but one column.
    name = str(c.get("name") or "(no name)")[:24]
    head = t(f"{name:<24} {c['status']:<16} {conn['state']:<12} ") + _rtt(c.get("latency"))
    lines = [head, f"    {c['onion']}.onion"]
    if conn.get("reason"):
        lines.append(f"    why: {t(conn['reason'])}")
    return lines


@contact_app.command("list")
def contact_list() -> None:
    """Your contacts, their connection states and round trips.

    Name, status, connection (with why) and recent round trips (p50/p95 in seconds, and
    how many), each with its full onion address."""
    result = call("GET", "/v1/contacts")
    if as_json():
        show(result)
        return
    if result:
        console.print(f"{'name':<24} {'status':<16} {'connection':<12} round trip",
                      style="bold", highlight=False)
    else:
        console.print("no contacts yet: nyth contact add <contact id or onion>")
    for c in result:
        for line in _contact_lines(c):
            _print_hanging(line)
    for c in result:
        _warn_mailbox_change(c)


@contact_app.command("mailbox-confirm")
def contact_mailbox_confirm(
        onion: str, mailbox: str,
        yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False) -> None:
    """Answer a contact's proposed mailbox change.

    Name the proposed mailbox to use it from now on, or the current one to keep it
    (dismissing the proposal)."""
    try:
        wanted, contact_onion = normalize_onion(mailbox), normalize_onion(onion)
    except DecodeError as exc:
        raise typer.BadParameter(str(exc)) from exc
    contact = call("GET", f"/v1/contacts/{contact_onion}")
    change = contact.get("mailbox_change")
    if not change:
        fail(f"no mailbox change is waiting for {contact_onion}.onion")
    switching = wanted == change["to"]
    if switching and as_json() and not yes:
        fail("with --json, give --yes: a switch is confirmed on the terminal otherwise")
    if switching and not as_json():
        console.print(f"offline messages to {contact_onion}.onion will go to {t(change['to'])}"
                      f".onion instead of {t(change['from'])}.onion. Whoever runs a mailbox "
                      "receives, can drop and sees the timing of what is sent through it.")
        if not yes and not typer.confirm("Switch this contact's mailbox?"):
            console.print("nothing changed")
            raise typer.Exit(1)
    result = call("POST", f"/v1/contacts/{contact_onion}/mailbox/confirm", {"mailbox": wanted})
    if as_json():
        show(result)
        return
    console.print(f"{contact_onion}.onion: mailbox {t(result.get('mailbox'))}.onion"
                  + ("" if switching else " kept; the proposal is dismissed"))


@contact_app.command("accept")
def contact_accept(onion: str) -> None:
    """Accept a contact request."""
    _print_or_json(call("POST", f"/v1/contacts/{_onion(onion)}/accept"), lambda r: t(r["status"]))


@contact_app.command("refuse")
def contact_refuse(onion: str) -> None:
    """Refuse a contact request."""
    _print_or_json(call("POST", f"/v1/contacts/{_onion(onion)}/refuse"), lambda r: t(r["status"]))


def _print_or_json(result: Any, text: Callable[[Any], str]) -> None:
    if as_json():
        show(result)
    else:
        console.print(text(result))


@app.command()
def send(onion: str, text: str) -> None:
    """Send a P2P message; prints its id and delivery state."""
    result = call("POST", f"/v1/contacts/{_onion(onion)}/messages", {"text": text})
    _print_or_json(result, lambda r: f"{r['id']} {_state_text(r)}")


@app.command()
def messages(onion: str, limit: int = 50) -> None:
    """The conversation with a contact, with delivery states."""
    result = call("GET", f"/v1/contacts/{_onion(onion)}/messages", limit=limit)
    if as_json():
        show(result)
        return
    for m in result:
        arrow = "→" if m["direction"] == "out" else "←"
        when = _when(m["timestamp_ms"] / 1000)
        state = f"  [dim]{_state_text(m)}[/dim]" if m["direction"] == "out" else ""
        console.print(f"{when} {arrow} {t(m['text'])}{state}")


@app.command()
def retry(onion: str, msg_id: str) -> None:
    """Retry a queued message now."""
    _print_or_json(call("POST", f"/v1/contacts/{_onion(onion)}/messages/{msg_id}/retry"), _state_text)


@app.command()
def cancel(onion: str, msg_id: str) -> None:
    """Cancel a message that is still waiting to be delivered."""
    _print_or_json(call("POST", f"/v1/contacts/{_onion(onion)}/messages/{msg_id}/cancel"), _state_text)


# -- groups ----------------------------------------------------------------------------------
@group_app.command("create")
def group_create(
        name: str,
        server: Annotated[list[str] | None, typer.Option(help="group server onion")] = None,
        auto: Annotated[bool, typer.Option(
            "--auto", help="choose the servers from the discovery directories")] = False,
        k: Annotated[int | None, typer.Option(help="with --auto: how many servers")] = None,
        json_opt: JsonOpt = False) -> None:
    """Create a group (on --server onions, or chosen for you with --auto).

    With --auto the default policy chooses the servers; `nyth discover` shows what it
    chooses from."""
    as_json(json_opt)
    if auto == bool(server):
        raise typer.BadParameter("name servers with --server, or give --auto")
    body: dict[str, Any] = {"name": name, "servers": [_onion(o) for o in server or []],
                            "auto": auto}
    if k is not None:
        body["k"] = k
    result = call("POST", "/v1/groups", body)
    if as_json():
        show(result)
        return
    console.print(f"group {result['id']} ({t(result['name'])})")
    for chosen in result.get("choice") or []:
        console.print(f"  on {chosen['onion']}.onion", highlight=False)
        _print_hanging(f"     why: {t(chosen['reason'])}")


@group_app.command("list")
def group_list() -> None:
    """Your groups, with message and missing counts."""
    result = call("GET", "/v1/groups")
    if as_json():
        show(result)
        return
    for g in result:
        console.print(f"{g['id']} {t(g['name'])}: {g['messages']} messages, {g['missing']} missing")


@group_app.command("invite")
def group_invite(gid: str, contact: str) -> None:
    """Invite a contact to a group."""
    result = call("POST", f"/v1/groups/{gid}/invite", {"contact": _onion(contact)})
    _print_or_json(result, lambda r: f"invite {_state_text(r)}")


@group_app.command("invites")
def group_invites() -> None:
    """Group invites waiting for your answer."""
    result = call("GET", "/v1/groups/invites")
    if as_json():
        show(result)
        return
    for inv in result:
        console.print(f"{inv['id']} {t(inv['name'])} from {t(inv['from'])}")


@group_app.command("join")
def group_join(gid: str) -> None:
    """Accept a group invite."""
    result = call("POST", f"/v1/groups/invites/{gid}/accept")
    _print_or_json(result, lambda r: f"joined {t(r['name'])} ({r['id']})")


@group_app.command("post")
def group_post(gid: str, text: str) -> None:
    """Post a message to a group."""
    result = call("POST", f"/v1/groups/{gid}/messages", {"text": text})
    _print_or_json(result, lambda r: f"{r['hash'][:16]} {_state_text(r)}")


def _author(message: dict[str, Any]) -> str:
    """Who wrote a post: "you", the contact's name, or (someone who is not a contact, or
    an answer from an engine older than these fields) the key's first 8 hex digits."""
    if message.get("mine"):
        return "you"
    name = message.get("author_name")
    return t(name[:32]) if isinstance(name, str) and name else t(message["author"][:8])


@group_app.command("read")
def group_read(gid: str, limit: int = 100) -> None:
    """A group's messages, oldest first."""
    result = call("GET", f"/v1/groups/{gid}/messages", limit=limit)
    if as_json():
        show(result)
        return
    for m in result["messages"]:
        # The author's claimed time, flagged when the peer did not order by it.
        adjusted = m.get("time_adjusted")
        flag = f" [yellow](claimed time; ordered as {t(str(adjusted))})[/yellow]" if adjusted else ""
        console.print(f"{_when(m['timestamp_ms'] / 1000)}{flag} {_author(m)}: "
                      f"{t(m['body'])}  [dim]{t(m['state'])}[/dim]")
    if result["missing"]:
        console.print(f"[yellow]{len(result['missing'])} messages known to be missing[/yellow]")


def _short(onion: str | None) -> str:
    return f"{onion[:12]}…" if onion else "?"


def _find_group(name_or_id: str) -> dict[str, Any]:
    """A group by id, or by name when exactly one group has it."""
    groups = call("GET", "/v1/groups")
    found = [g for g in groups if name_or_id in (g["id"], g["name"])]
    if len(found) != 1:
        what = "no group" if not found else f"{len(found)} groups"
        fail(f"{what} named {name_or_id}; use the id (nyth group list)")
    return dict(found[0])


def _gap_line(gap: dict[str, Any]) -> str:
    if gap["state"] == "recovered":
        by = gap["recovered_by"] or {}
        source = by.get("name") or _short(by.get("source"))
        return (f"  recovered {gap['hash'][:12]} by {t(by.get('method'))} "
                f"{t(source)} at {_when(gap['recovered_at'])}")
    kind, _, onion = str(gap["found_via"]).partition(" ")
    via = f"{kind} {_short(onion)}" if onion else kind
    line = f"  open {gap['hash'][:12]} (found via {t(via)}, {gap['attempts']} attempts)"
    if gap["doing"]:
        line += f"\n    now: {t(gap['doing'])}"
    if gap["reason"]:
        line += f"\n    why: {t(gap['reason'])}"
    if gap["next_attempt_at"]:
        line += f"\n    next attempt {_when(gap['next_attempt_at'])}"
    return line


@group_app.command("status")
def group_status(group: Annotated[str, typer.Argument(help="group name or id")],
                 json_opt: JsonOpt = False) -> None:
    """Servers, epoch and recovery: gaps found, recovered (how) and still open (why, next try)."""
    as_json(json_opt)
    g = _find_group(group)
    if as_json():
        show(g)
        return
    owner = "you" if g["owned"] else _short(g["owner"]) if g["owner"] else "none (v1: never moves)"
    console.print(f"[bold]{t(g['name'])}[/bold] {g['id']}")
    console.print(f"v{g['version']}, epoch {g['epoch']}, owner {owner}; "
                  f"{g['messages']} messages, {g['missing']} missing")
    for onion in g["servers"]:
        console.print(f"  server {_short(onion)} {_state_text(g['server_state'].get(onion, {'state': '?'}))}")
    for d in g["draining"]:
        console.print(f"  draining {_short(d['onion'])} until {_when(d['until'])}")
    r = g["recovery"]
    console.print("recovery: " + (" > ".join(r["strategies"]) or "off"))
    how = ", ".join(f"{k} {v}" for k, v in sorted(r["recovered"].items())) or "none"
    console.print(f"gaps: found {r['found']}, recovered {how}, open {len(r['open'])}"
                  + (f" (+{r['untracked']} waiting)" if r["untracked"] else ""))
    for gap in [*r["open"], *r["recent"][:10]]:
        console.print(_gap_line(gap))
    for move in r["moves_ignored"]:
        console.print(f"  move {move['hash'][:12]} ignored: {t(move['reason'])}")


@group_app.command("move")
def group_move(gid: str, servers: Annotated[list[str], typer.Argument(help="new server onions")],
               json_opt: JsonOpt = False) -> None:
    """Move a group you own to other servers (members follow)."""
    as_json(json_opt)
    result = call("POST", f"/v1/groups/{gid}/move", {"servers": [_onion(o) for o in servers]})
    if as_json():
        show(result)
        return
    console.print(f"moved {t(result['name'])} to epoch {result['epoch']}: "
                  + ", ".join(_short(s) for s in result["servers"]))


@group_app.command("recovery")
def group_recovery(gid: str, strategies: Annotated[list[str] | None, typer.Argument(
        help="refetch, server, member, move: in the order to try; none: all off")] = None,
                   json_opt: JsonOpt = False) -> None:
    """Set a group's recovery strategies."""
    as_json(json_opt)
    result = call("PATCH", f"/v1/groups/{gid}", {"recovery": strategies or []})
    if as_json():
        show(result)
        return
    console.print("recovery: " + (" > ".join(result["recovery"]["strategies"]) or "off"))


@app.command()
def mailbox() -> None:
    """Your contact id, your mailbox's state, and what it can learn.

    The detection setting, false-positive rate, expected detections p·N + M and the
    recommended n."""
    result = call("GET", "/v1/mailbox")
    if as_json():
        show(result)
        return
    console.print(f"contact id: {result['contact_id'] or '(no mailbox configured)'}", soft_wrap=True)
    console.print(f"mailbox: {result['mailbox']} ({t(result['state'].get('state'))} "
                  f"{t(result['state'].get('reason') or '')})")
    console.print(f"detection: {result['mode']}; {result['records_per_day']} records/day seen, "
                  f"{result['ours_per_day']} ours; recommended n = {result['recommended_bits']}")
    if result["expected_detections_per_day"] is not None:
        console.print(f"the mailbox expects ≈ {result['expected_detections_per_day']} detections/day "
                      f"for you (false-positive rate {result['false_positive_rate']:.2g})")


# -- discovery -------------------------------------------------------------------------------
def _seconds(ms: int | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.1f}"


def _server_lines(s: dict[str, Any]) -> list[str]:
    """One server in an 80-column terminal: its figures, its full onion on a line of its
    own (copyable), and why it ranks where it does."""
    audit = s["audit"]
    audit_text = {"kept": f"kept {audit['passed']}", "lost": "LOST"}.get(audit["state"], "none")
    latency = f"{_seconds(s['latency_p50_ms'])}/{_seconds(s['latency_p95_ms'])}s"
    head = (f"{s['rank']:>3} {t(s['kind']):<12} {t(s['state']):<5} "
            f"{s['availability']:>4.0%} {s['probes_ok']:>4}/{s['probes']:<4} "
            f"{latency:>12} {audit_text:<8} {t(s['label'][:16])}")
    lines = [head, f"    {s['onion']}.onion", f"    why: {t(s['reason'])}"]
    if s["kind"] == "group-server":
        lines.append("    --auto: would pick it" if s["eligible"] else
                     f"    --auto: would not pick it: {t(s['not_eligible'] or '')}")
    return lines


def _index_lines(i: dict[str, Any]) -> list[str]:
    lines = [f"  {i['onion']}.onion"]
    if i["epoch"] is not None:
        lines.append(f"    {t(i['state'])}: epoch {i['epoch']} from the {t(i['source'])}, read "
                     f"{_when(i['fetched_at'])}, expires {_when(i['expires_at'])}, "
                     f"{i['entries']} servers")
    else:
        lines.append(f"    {t(i['state'])}: no directory held")
    if i["reason"]:
        lines.append(f"    last refresh: {t(i['reason'])}")
    if i["last_refusal"]:
        lines.append(f"    [yellow]refused at {_when(i['refused_at'])}: "
                     f"{t(i['last_refusal'])}[/yellow]")
    return lines


def _print_hanging(line: str) -> None:
    """A line whose wrapped continuation keeps its indent, so a long reason stays under
    its server instead of running back to column 0."""
    indent = len(line) - len(line.lstrip(" "))
    console.print(Padding(line[indent:].rstrip(), (0, 0, 0, indent), expand=False),
                  highlight=False)


@app.command()
def discover(kind: Annotated[str | None, typer.Option(
                 help="group-server or mailbox")] = None,
             json_opt: JsonOpt = False) -> None:
    """Servers the discovery indexes measured, best ranked first.

    With why each ranks where it does, where indexes disagree, and each index's
    state."""
    as_json(json_opt)
    if kind not in (None, "group-server", "mailbox"):
        raise typer.BadParameter("--kind is group-server or mailbox")
    result = call("GET", "/v1/discovery", kind=kind) if kind else call("GET", "/v1/discovery")
    if as_json():
        show(result)
        return
    servers = result["servers"]
    if servers:
        console.print(f"{'#':>3} {'kind':<12} {'state':<5} {'up%':>4} {'answered':^9} "
                      f"{'p50/p95':>12} {'audit':<8} label", style="bold", highlight=False)
    for s in servers:
        for line in _server_lines(s):
            _print_hanging(line)
    if not servers:
        console.print("no servers listed (yet): see the indexes' states below")
    split = [s for s in servers if s["disagreements"]]
    if split:
        console.print("[bold]indexes disagree:[/bold]")
    for s in split:
        console.print(f"  {s['onion']}.onion", highlight=False)
        for text in s["disagreements"]:
            _print_hanging(f"    {t(text)}")
    console.print("[bold]indexes:[/bold]" if result["indexes"] else
                  "no discovery index configured (NYTH_DISCOVERY_INDEXES)")
    for index in result["indexes"]:
        for line in _index_lines(index):
            _print_hanging(line)


# -- pinned servers --------------------------------------------------------------------------
def _limits(limits: dict[str, int]) -> str:
    return ", ".join(f"{name} {value}" for name, value in limits.items())


def _pinned_server_lines(s: dict[str, Any]) -> list[str]:
    """One pinned server in an 80-column terminal: kind, state and round trips; its full
    onion on a line of its own; then what uses it, its limits and, when it presents a
    changed bundle, what changed (long lines wrap under their indent)."""
    presented = s["presented"]
    head = t(f"{s['kind']:<8} {s['state']:<16} ") + _rtt(s.get("latency"))
    lines = [head, f"    {s['onion']}.onion"]
    # A refusal's reason repeats the changes listed below.
    why = [t(s["reason"])] if s.get("reason") and s["state"] != "bundle_changed" else []
    if s.get("next_retry_at"):
        why.append(f"next retry {_when(s['next_retry_at'])}")
    if why:
        lines.append(f"    why: {', '.join(why)}")
    if s["used_for"]:
        lines.append(f"    used for: {t(', '.join(s['used_for']))}")
    lines.append(f"    limits: {t(_limits(s['pinned']['limits']))}")
    if presented:
        lines.append(f"    [yellow]presents instead: {t('; '.join(presented['changes']))}[/yellow]")
    tokens = s.get("tokens")
    if tokens:
        lines.append(f"    tokens: {tokens['tokens']} ({t(tokens['state'])}"
                     + (f": {t(tokens['reason'])})" if tokens.get("reason") else ")"))
    return lines


@app.command()
def servers() -> None:
    """Pinned group servers and mailboxes, and their states.

    What they promise, their state, recent round trips (p50/p95 in seconds, and how
    many), and any changed bundle waiting for your review."""
    result = call("GET", "/v1/servers")
    if as_json():
        show(result)
        return
    if result:
        console.print(f"{'kind':<8} {'state':<16} round trip", style="bold", highlight=False)
    else:
        console.print("no pinned servers yet")
    for s in result:
        for line in _pinned_server_lines(s):
            _print_hanging(line)
    if any(s["presented"] for s in result):
        console.print("[yellow]a server presents a changed bundle: review it and accept it with "
                      "nyth server repin <onion>[/yellow]")


@server_app.command("repin")
def server_repin(onion: str,
                 yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False) -> None:
    """Show a server's changed bundle, and re-pin it after you confirm.

    Only the bundle shown here can be pinned: if the server presents another one by then,
    nothing changes."""
    try:
        wanted = normalize_onion(onion)
    except DecodeError as exc:
        raise typer.BadParameter(str(exc)) from exc
    server = next((s for s in call("GET", "/v1/servers") if s["onion"] == wanted), None)
    if server is None:
        fail(f"no pinned server {wanted}.onion")
    presented = server["presented"]
    if presented is None:
        fail(f"{wanted}.onion has not presented a different bundle: nothing to re-pin")
    if as_json():
        # The review below is text: a script reviews `presented` in `nyth --json servers`.
        if not yes:
            fail("with --json, give --yes: a re-pin is confirmed on the terminal otherwise")
        show(call("POST", f"/v1/servers/{wanted}/repin",
                  {"bundle_sha256": presented["bundle_sha256"]}))
        return
    used = f" ({t(', '.join(server['used_for']))})" if server["used_for"] else ""
    console.print(f"{t(server['kind'])} server {wanted}.onion{used} presents a signed bundle that "
                  "differs from the one you pinned:")
    for change in presented["changes"]:
        console.print(f"  {t(change)}")
    console.print(f"its promises: {t(_limits(presented['limits']))}")
    console.print(f"bundle sha256 {t(presented['bundle_sha256'])}")
    if not yes and not typer.confirm("Accept this bundle and re-pin the server?"):
        console.print("nothing was re-pinned")
        raise typer.Exit(1)
    result = call("POST", f"/v1/servers/{wanted}/repin",
                  {"bundle_sha256": presented["bundle_sha256"]})
    console.print(f"re-pinned {wanted}.onion: {t(_limits(result['pinned']['limits']))} "
                  f"(now {t(result['state'])})")


@app.command()
def events() -> None:
    """Follow the live event stream (Ctrl-C to stop); with --json, one event per line."""
    try:
        with client() as c:
            for event in c.events():
                if as_json():
                    console.print(json.dumps(event), soft_wrap=True, markup=False,
                                  highlight=False, emoji=False)
                else:
                    console.print_json(json.dumps(event))
    except KeyboardInterrupt:
        pass


def _register_devnet() -> None:
    # Imported lazily: devnet pulls in the tor/redis launchers, which plain API use never needs.
    from nyth_cli.devnet import devnet_app

    app.add_typer(devnet_app, name="devnet")


_register_devnet()
