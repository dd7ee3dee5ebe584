"""Does the egress guard's loaded table do what was intended?

Compares ``nft -j list table inet NAME`` (what the kernel holds) with the intent the role renders
from (uids, mode, allowlist, controller, phone-home sets), rule by rule, in order: every allowlist
rule must carry its address match, and nothing accepts that the intent does not name. Shared by
the egress_guard_verify module (after ``nft -f``, before the restore timer is disarmed) and by
``toolkit guard``/GUARD-001. Pure functions on JSON; no imports beyond the standard library, so
Ansible can ship it to the host with the module.
"""

from __future__ import annotations

import ipaddress
from typing import Any

Sig = tuple  # (frozenset of (left, op, right) matches, verdict)


def _left(left: dict[str, Any]) -> str:
    if "meta" in left:
        return f"meta {left['meta'].get('key')}"
    if "payload" in left:
        return f"{left['payload'].get('protocol')} {left['payload'].get('field')}"
    if "ct" in left:
        return f"ct {left['ct'].get('key')}"
    return repr(left)


def _right(right: Any) -> Any:
    if isinstance(right, dict) and "prefix" in right:
        return f"{right['prefix']['addr']}/{right['prefix']['len']}"
    if isinstance(right, dict) and "set" in right:
        values = [_right(v) for v in right["set"]]
        return values[0] if len(values) == 1 else tuple(sorted(values, key=str))
    if isinstance(right, list):
        return tuple(sorted((_right(v) for v in right), key=str))
    return right


def rule_signature(exprs: list[dict[str, Any]]) -> Sig:
    """The matches of a rule and its verdict (counters, logs and limits left out)."""
    matches = []
    verdict: tuple = ()
    for e in exprs:
        if "match" in e:
            m = e["match"]
            matches.append((_left(m.get("left", {})), m.get("op"), _right(m.get("right"))))
        elif "accept" in e:
            verdict = ("accept",)
        elif "drop" in e:
            verdict = ("drop",)
        elif "reject" in e:
            verdict = ("reject",)
        elif "jump" in e or "goto" in e:
            verdict = ("jump", (e.get("jump") or e.get("goto")).get("target"))
    return (frozenset(matches), verdict)


def describe(sig: Sig) -> str:
    matches, verdict = sig
    words = [f"{left} {'' if op == '==' else op + ' '}{right}" for left, op, right in sorted(matches, key=str)]
    return " ".join(words + [" ".join(map(str, verdict)) or "(no verdict)"])


def _addr(cidr: str) -> str:
    net = ipaddress.ip_network(cidr, strict=False)
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else net.with_prefixlen


def _eq(left: str, right: Any) -> tuple:
    return (left, "==", right)


def intended_output_rules(intent: dict[str, Any]) -> list[Sig]:
    """The output chain the role's template renders from this intent, as signatures."""
    rules: list[Sig] = [(frozenset({_eq("meta oifname", "lo")}), ("accept",))]
    for uid in intent.get("uids", []):
        rules.append((frozenset({_eq("meta skuid", int(uid))}), ("jump", "blocked_service")))
    sinkhole = intent.get("sinkhole_addresses", [])
    if any(":" not in a for a in sinkhole):
        rules.append((frozenset({_eq("ip daddr", "@phone_home_v4")}), ("jump", "blocked_phone_home")))
    if any(":" in a for a in sinkhole):
        rules.append((frozenset({_eq("ip6 daddr", "@phone_home_v6")}), ("jump", "blocked_phone_home")))
    host_wide = intent.get("host_wide")
    if host_wide is True or str(host_wide).lower() in ("true", "1", "yes"):
        rules.append((frozenset({("ct state", "in", ("established", "related"))}), ("accept",)))
        nd = ("nd-neighbor-advert", "nd-neighbor-solicit", "nd-router-solicit")
        rules.append((frozenset({_eq("icmpv6 type", nd)}), ("accept",)))
        mld = ("mld-listener-report", "mld2-listener-report")
        rules.append((frozenset({_eq("ip6 daddr", "ff02::/16"), _eq("icmpv6 type", mld)}), ("accept",)))
        for entry in intent.get("allowlist", []):
            family = "ip6" if ":" in entry["cidr"] else "ip"
            matches = {_eq(f"{family} daddr", _addr(entry["cidr"]))}
            proto, ports = entry.get("proto", "any"), list(entry.get("ports", []))
            if proto != "any" and ports:
                matches.add(_eq(f"{proto} dport", ports[0] if len(ports) == 1 else tuple(sorted(ports, key=str))))
            elif proto != "any":
                matches.add(_eq("meta l4proto", proto))
            rules.append((frozenset(matches), ("accept",)))
        if intent.get("controller"):
            c = intent["controller"]
            rules.append((frozenset({_eq(f"{'ip6' if ':' in c else 'ip'} daddr", _addr(c))}), ("accept",)))
        rules.append((frozenset(), ("jump", "blocked_host")))
    return rules


def _chains(doc: dict[str, Any]) -> tuple[dict[str, dict], dict[str, list[Sig]]]:
    chains: dict[str, dict] = {}
    rules: dict[str, list[Sig]] = {}
    for item in (doc or {}).get("nftables", []):
        if "chain" in item:
            chains[item["chain"]["name"]] = item["chain"]
            rules.setdefault(item["chain"]["name"], [])
        elif "rule" in item:
            rules.setdefault(item["rule"]["chain"], []).append(rule_signature(item["rule"].get("expr", [])))
    return chains, rules


def structural_problems(doc: dict[str, Any] | None) -> list[str]:
    """What is wrong with a loaded guard table whatever the intent: an accept that matches
    nothing, service-user rules that come after an accept, a blocked_* chain that does not drop."""
    chains, rules = _chains(doc or {})
    problems = []
    out = chains.get("output")
    if not out or out.get("hook") != "output" or out.get("type") != "filter":
        return ["no output hook chain of type filter"]
    output = rules.get("output", [])
    first_accept = None
    for i, (matches, verdict) in enumerate(output):
        if verdict == ("accept",) and not matches:
            problems.append(f"output rule {i + 1} accepts everything (it carries no match)")
        if not verdict:
            problems.append(f"output rule {i + 1} has no verdict: {describe((matches, verdict))}")
        if verdict == ("accept",) and first_accept is None and matches != frozenset({_eq("meta oifname", "lo")}):
            first_accept = i
        if verdict == ("jump", "blocked_service") and first_accept is not None and first_accept < i:
            problems.append(f"output rule {i + 1} (a service user) comes after the accept of rule {first_accept + 1}")
    for name in chains:
        if name.startswith("blocked_") and (not rules.get(name) or rules[name][-1][1] != ("drop",)):
            problems.append(f"chain {name} does not end in drop")
    return problems


def intent_problems(doc: dict[str, Any] | None, intent: dict[str, Any]) -> list[str]:
    """Differences between the loaded table and the intent (empty: the kernel does what was meant)."""
    problems = structural_problems(doc)
    _, rules = _chains(doc or {})
    loaded = rules.get("output", [])
    wanted = intended_output_rules(intent)
    missing = [w for w in wanted if w not in loaded]
    extra = [r for r in loaded if r not in wanted]
    problems += [f"intended rule missing: {describe(w)}" for w in missing]
    problems += [f"rule not in the intent: {describe(r)}" for r in extra]
    if not missing and not extra and loaded != wanted:
        problems.append("the output chain's rules are in another order than intended")
    return problems
