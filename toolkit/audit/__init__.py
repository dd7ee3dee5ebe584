"""``toolkit audit``: prove that nothing leaves the machine.

Modules, in the order data flows through them:

* ``policy``: the YAML policy (what may be reached) compiled into a kernel BPF filter;
* ``capture``: live (libpcap on every interface) or offline (pcap/pcapng) packets that pass
  the filter, parsed from their headers; the few that name a flow are dissected;
* ``flows`` / ``names``: the flow table, direction inference, and DNS/SNI/HTTP Host/QUIC names;
* ``attribution``: socket inode to pid, user and command line from /proc (live only);
* ``static_checks``: listeners, Continue config, telemetry flags, vLLM/Ollama unit environment;
* ``controls`` / ``waivers``: stable control IDs, severities, verdict and accepted findings;
* ``report_*`` / ``fleet``: JSON, JUnit, Prometheus textfile, HTML, and the fleet summary.

Exit codes of ``toolkit audit`` (documented in its --help): 0 pass, 1 a finding (egress or a
failed static control), 2 inconclusive (the capture could not prove what it saw),
64 usage error or bad input (policy, waiver, pcap file). 2 is reserved for INCONCLUSIVE here,
so usage errors use 64 (EX_USAGE of sysexits.h) instead of the toolkit's usual 2.
"""

from __future__ import annotations

from toolkit.errors import UsageError

EXIT_PASS = 0
EXIT_FINDING = 1
EXIT_INCONCLUSIVE = 2
EXIT_USAGE = 64


class AuditUsageError(UsageError):
    """Bad arguments or input file for the audit: exit 64, because 2 means INCONCLUSIVE here."""

    exit_code = EXIT_USAGE
