#!/usr/bin/env python3
"""Drive machina's QMP monitor with QEMU's own Python client library, qemu.qmp.

Usage: qmp_client_check.py SOCKET

machina must be listening on the unix socket SOCKET and started like
`machina -M q35 -S -nodefaults -append machina.test=powerbutton -qmp unix:SOCKET,...`:
a q35 machine in prelaunch whose tiny guest, once running, powers off when the power
button is pressed.

The client connects, reads the greeting, negotiates (with OOB, as qemu.qmp does when it
is offered), runs queries, checks errors and receives events, and finally powers the
guest down; the server then disconnects. Exit status: 0 when every check passed, 1 on a
failed check, 3 when qemu.qmp is not installed.
"""

import asyncio
import sys

try:
    from qemu.qmp import ExecuteError, QMPClient
except ImportError:
    print(
        "qemu.qmp is not installed: run `python3 -m pip install --quiet qemu.qmp` "
        "(the install step in .ci/run)",
        file=sys.stderr,
    )
    sys.exit(3)

TIMEOUT = 20


def check(cond, what):
    if not cond:
        raise AssertionError(what)


async def expect_error(qmp, cmd, args, klass, desc):
    try:
        res = await asyncio.wait_for(qmp.execute(cmd, args), TIMEOUT)
    except ExecuteError as err:
        check(err.error_class == klass, f"{cmd}: class {err.error_class!r}, wanted {klass!r}")
        check(str(err) == desc, f"{cmd}: desc {str(err)!r}, wanted {desc!r}")
        check(err.received.get("id") == err.sent.get("id"), f"{cmd}: id echoed")
        return
    raise AssertionError(f"{cmd} {args} should have failed, returned {res!r}")


async def next_event(qmp, name):
    """The next event, which must be `name`."""
    event = await asyncio.wait_for(qmp.events.get(), TIMEOUT)
    check(event["event"] == name, f"expected event {name}, got {event}")
    check(event["timestamp"]["seconds"] > 0, f"timestamp of {event}")
    return event


async def run(path):
    qmp = QMPClient("machina-check")
    await asyncio.wait_for(qmp.connect(path), TIMEOUT)

    greeting = qmp.greeting
    check(greeting is not None, "no greeting")
    version = greeting.QMP.version
    check(version["qemu"]["major"] >= 6, f"greeting version {version}")
    check(version["package"].startswith("machina-"), f"package {version['package']!r}")
    check("oob" in greeting.QMP.capabilities, "oob offered on a unix socket")

    async def execute(cmd, args=None):
        return await asyncio.wait_for(qmp.execute(cmd, args), TIMEOUT)

    status = await execute("query-status")
    check(status == {"status": "prelaunch", "running": False}, f"query-status: {status}")

    qv = await execute("query-version")
    check(qv["qemu"] == version["qemu"], f"query-version {qv} vs greeting {version}")

    machines = await execute("query-machines")
    names = {m["name"] for m in machines}
    aliases = {m.get("alias") for m in machines}
    check("pc-q35-10.2" in names and "q35" in aliases, f"query-machines: {sorted(names)}")
    check(any(m.get("is-default") for m in machines), "a default machine")

    plan = await execute("x-query-machine-definition", {"machine": "q35"})
    check(plan["machine"] == "pc-q35-10.2", f"definition of q35: {plan['machine']}")
    check(plan["buses"][0]["is_root"], "the first bus is the root")
    mch = plan["pci"][0]
    check(
        (mch["type_name"], mch["slot"], mch["function"]) == ("mch", 0, 0),
        f"q35's host bridge: {mch}",
    )

    commands = {c["name"] for c in await execute("query-commands")}
    for name in ("qmp_capabilities", "query-status", "x-query-machine-definition",
                 "machine-build", "query-pci", "system_powerdown", "quit"):
        check(name in commands, f"query-commands lacks {name}")

    await expect_error(qmp, "no-such-command", None, "CommandNotFound",
                       "The command no-such-command has not been found")
    await expect_error(qmp, "query-machines", {"bogus": 1}, "GenericError",
                       "Parameter 'bogus' is unexpected")
    await expect_error(qmp, "qmp_capabilities", None, "CommandNotFound",
                       "Capabilities negotiation is already complete, command ignored")

    # What exists is what was planned for the configured machine.
    pci = await execute("query-pci")
    check(pci[0]["devices"][0]["id"]["device"] == 0x29C0, f"00:00.0 is the MCH: {pci}")

    # Events: RESUME before cont returns, STOP, POWERDOWN, then the guest shuts down.
    await execute("cont")
    await next_event(qmp, "RESUME")
    check((await execute("query-status"))["status"] == "running", "running after cont")
    await execute("stop")
    await next_event(qmp, "STOP")
    check((await execute("query-status"))["status"] == "paused", "paused after stop")
    await execute("cont")
    await next_event(qmp, "RESUME")
    await execute("system_powerdown")
    await next_event(qmp, "POWERDOWN")
    shutdown = await next_event(qmp, "SHUTDOWN")
    check(shutdown["data"] == {"guest": True, "reason": "guest-shutdown"}, f"{shutdown}")
    await qmp.disconnect()
    print("qemu.qmp: all checks passed")


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        asyncio.run(run(sys.argv[1]))
    except Exception as err:  # pylint: disable=broad-except
        # A failed check, a QMP error or timeout, a refused connection: one line each.
        print(f"qemu.qmp check failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
