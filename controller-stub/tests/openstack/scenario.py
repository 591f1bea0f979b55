"""The stock OpenStack client against the controller, in noauth mode.

Creates, lists, shows, updates and deletes networks, subnets, ports and every networking-sfc
resource (port pairs, port pair groups, flow classifiers, port chains, service graphs) with
`openstack ...` commands, as an operator would type them, and checks what comes back. A few
calls go through openstacksdk directly, as scripts and orchestrators use it.

The commands run through the CLI's own entry point (`openstackclient.shell.main`) inside this
interpreter rather than as one process each: the same argument parsing, plugins and HTTP, minus
two seconds of start-up per command. One command at the end runs the real `openstack`
executable to show the installed entry point works as well.

Usage: scenario.py ENDPOINT   (run by client.sh inside the client's venv)
"""

import contextlib
import io
import json
import os
import subprocess
import sys

import openstack
from openstackclient import shell

ENDPOINT = sys.argv[1]
AUTH = ["--os-auth-type", "none", "--os-endpoint", ENDPOINT]
steps = 0


class Failure(Exception):
    pass


def run(*args):
    """One `openstack` command; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = shell.main(AUTH + [str(a) for a in args])
        except SystemExit as e:  # argparse errors exit
            rc = e.code if isinstance(e.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def osc(*args):
    """Runs a command that must succeed; its standard output."""
    global steps
    steps += 1
    rc, out, err = run(*args)
    if rc != 0:
        raise Failure(f"openstack {' '.join(map(str, args))} exited {rc}:\n{err}{out}")
    return out


def osc_json(*args):
    return json.loads(osc(*args, "-f", "json"))


def osc_fails(*args):
    """Runs a command that must fail; its error output."""
    global steps
    steps += 1
    rc, out, err = run(*args)
    if rc == 0:
        raise Failure(f"openstack {' '.join(map(str, args))} succeeded:\n{out}")
    return err


def eq(actual, expected, what):
    if actual != expected:
        raise Failure(f"{what}: expected {expected!r}, got {actual!r}")


def names(rows, key="Name"):
    return sorted(r[key] for r in rows)


def main():
    # --- networks -------------------------------------------------------------------------
    net = osc_json("network", "create", "--description", "data plane", "net0")
    eq(net["name"], "net0", "network name")
    eq(net["mtu"], 1450, "network mtu")
    eq(net["provider:network_type"], "vxlan", "network type")
    osc("network", "set", "--name", "net1", "net0")
    eq(osc_json("network", "show", "net1")["description"], "data plane", "network show")
    eq(names(osc_json("network", "list")), ["net1"], "network list")

    # --- subnets --------------------------------------------------------------------------
    sub = osc_json("subnet", "create", "--network", "net1", "--subnet-range", "10.0.0.0/24",
                   "--allocation-pool", "start=10.0.0.10,end=10.0.0.99",
                   "--dns-nameserver", "10.0.0.53", "sub0")
    eq(sub["gateway_ip"], "10.0.0.1", "subnet gateway")
    eq(sub["allocation_pools"], [{"start": "10.0.0.10", "end": "10.0.0.99"}], "subnet pools")
    eq(sub["dns_nameservers"], ["10.0.0.53"], "subnet dns")
    osc("subnet", "set", "--name", "sub1", "--description", "chain hops", "sub0")
    shown = osc_json("subnet", "show", "sub1")
    eq((shown["description"], shown["cidr"]), ("chain hops", "10.0.0.0/24"), "subnet show")
    sub6 = osc_json("subnet", "create", "--network", "net1", "--ip-version", "6",
                    "--subnet-range", "fd00:1::/64", "sub6")
    eq(sub6["gateway_ip"], "fd00:1::1", "ipv6 gateway")
    eq(names(osc_json("subnet", "list", "--network", "net1")), ["sub1", "sub6"], "subnet list")
    osc("subnet", "delete", "sub6")
    eq(names(osc_json("subnet", "list")), ["sub1"], "subnet list after delete")
    err = osc_fails("subnet", "create", "--network", "net1", "--subnet-range", "10.0.0.128/25",
                    "overlap")
    if "overlaps with another subnet" not in err:
        raise Failure(f"overlapping subnet: unexpected error {err!r}")

    # --- ports ----------------------------------------------------------------------------
    def port(name, device, host=None, *extra):
        args = ["port", "create", "--network", "net1", "--device", device, *extra]
        if host:
            args += ["--host", host]
        return osc_json(*args, name)

    src = port("src", "vm-src", "compute-1")
    eq(src["fixed_ips"], [{"subnet_id": sub["id"], "ip_address": "10.0.0.10"}], "src fixed ips")
    eq(src["status"], "ACTIVE", "bound port status")
    eq(src["binding_host_id"], "compute-1", "binding host")
    if not src["mac_address"].startswith("fa:16:3e:"):
        raise Failure(f"generated MAC {src['mac_address']}")
    dst = port("dst", "vm-dst", "compute-2", "--fixed-ip", "subnet=sub1,ip-address=10.0.0.200")
    eq(dst["fixed_ips"][0]["ip_address"], "10.0.0.200", "explicit fixed ip")
    for i in (1, 2):
        port(f"sf{i}-in", f"vm-sf{i}", "compute-1", "--mac-address", f"fa:16:3e:00:0{i}:01")
        port(f"sf{i}-out", f"vm-sf{i}", "compute-1", "--disable-port-security")
    eq(osc_json("port", "show", "sf1-in")["mac_address"], "fa:16:3e:00:01:01", "given MAC")
    eq(osc_json("port", "show", "sf2-out")["port_security_enabled"], False, "port security")
    osc("port", "set", "--description", "client side", "--fixed-ip", "ip-address=10.0.0.50",
        "src")
    shown = osc_json("port", "show", "src")
    eq(sorted(f["ip_address"] for f in shown["fixed_ips"]), ["10.0.0.10", "10.0.0.50"],
       "added fixed ip")
    eq(shown["description"], "client side", "port description")
    eq(names(osc_json("port", "list", "--device-id", "vm-sf1")), ["sf1-in", "sf1-out"],
       "port list --device-id")
    eq(names(osc_json("port", "list", "--fixed-ip", "ip-address=10.0.0.200")), ["dst"],
       "port list --fixed-ip")
    eq(len(osc_json("port", "list", "--network", "net1")), 6, "port list --network")
    osc_fails("port", "create", "--network", "net1", "--fixed-ip", "ip-address=10.0.0.200", "dup")

    # openstacksdk directly: the same ports, filtered as Neutron filters them.
    conn = openstack.connect(auth_type="none", auth={"endpoint": ENDPOINT})
    found = list(conn.network.ports(fixed_ips=["ip_address=10.0.0.50"]))
    eq([p.name for p in found], ["src"], "sdk fixed_ips filter")
    conn.network.update_port(found[0], name="src", binding_profile={"local_link": "x"})
    eq(conn.network.get_port(found[0].id).binding_profile, {"local_link": "x"}, "sdk update")
    eq(sorted(n.name for n in conn.network.networks()), ["net1"], "sdk networks")

    # --- port pairs -----------------------------------------------------------------------
    for i in (1, 2):
        pp = osc_json("sfc", "port", "pair", "create", "--ingress", f"sf{i}-in",
                      "--egress", f"sf{i}-out", "--service-function-parameters",
                      "correlation=mpls,weight=2", f"pp{i}")
        eq(pp["Service Function Parameters"], {"correlation": "mpls", "weight": 2},
           "port pair parameters")
    osc("sfc", "port", "pair", "set", "--name", "pp1b", "--description", "firewall", "pp1")
    shown = osc_json("sfc", "port", "pair", "show", "pp1b")
    eq(shown["Description"], "firewall", "port pair show")
    eq(shown["Ingress Logical Port"], osc_json("port", "show", "sf1-in")["id"], "pp ingress")
    eq(names(osc_json("sfc", "port", "pair", "list")), ["pp1b", "pp2"], "port pair list")
    # A pair whose ports sit on different devices is refused.
    osc_fails("sfc", "port", "pair", "create", "--ingress", "sf1-in", "--egress", "sf2-out",
              "bad")

    # --- port pair groups -----------------------------------------------------------------
    osc_json("sfc", "port", "pair", "group", "create", "--port-pair", "pp1b",
             "--port-pair-group-parameters", "lb-fields=ip_src&ip_dst", "ppg1")
    osc_json("sfc", "port", "pair", "group", "create", "--port-pair", "pp2", "ppg2")
    osc("sfc", "port", "pair", "group", "set", "--name", "ppg1b", "--description", "fw",
        "ppg1")
    shown = osc_json("sfc", "port", "pair", "group", "show", "ppg1b")
    eq(shown["Description"], "fw", "ppg show")
    eq(len(shown["Port Pair"]), 1, "ppg port pairs")
    eq(names(osc_json("sfc", "port", "pair", "group", "list")), ["ppg1b", "ppg2"], "ppg list")
    # A port pair belongs to one group at most.
    osc_fails("sfc", "port", "pair", "group", "create", "--port-pair", "pp2", "again")

    # --- flow classifiers -----------------------------------------------------------------
    osc_json("sfc", "flow", "classifier", "create", "--ethertype", "IPv4", "--protocol", "tcp",
             "--destination-port", "80:80", "--source-ip-prefix", "10.0.0.0/24",
             "--logical-source-port", "src", "fc-web")
    osc_json("sfc", "flow", "classifier", "create", "--protocol", "udp",
             "--destination-port", "53:53", "--logical-source-port", "src", "fc-dns")
    osc("sfc", "flow", "classifier", "set", "--description", "web", "fc-web")
    shown = osc_json("sfc", "flow", "classifier", "show", "fc-web")
    eq(shown["Description"], "web", "fc show")
    eq(shown["Protocol"], "tcp", "fc protocol")
    eq(names(osc_json("sfc", "flow", "classifier", "list")), ["fc-dns", "fc-web"], "fc list")
    # The same traffic twice conflicts.
    osc_fails("sfc", "flow", "classifier", "create", "--protocol", "tcp",
              "--destination-port", "80:80", "--logical-source-port", "src", "clash")

    # --- port chains ----------------------------------------------------------------------
    pc = osc_json("sfc", "port", "chain", "create", "--port-pair-group", "ppg1b",
                  "--flow-classifier", "fc-web", "--chain-parameters",
                  "correlation=mpls,symmetric=false", "pc1")
    # OSC does not print chain_id; the SDK's session reads the raw body.
    chain_id = conn.network.get(f"/sfc/port_chains/{pc['ID']}").json()["port_chain"]["chain_id"]
    eq(chain_id, 1, "auto-assigned chain_id")
    eq([c.name for c in conn.network.sfc_port_chains()], ["pc1"], "sdk port chains")
    osc_json("sfc", "port", "chain", "create", "--port-pair-group", "ppg2",
             "--flow-classifier", "fc-dns", "pc2")
    osc("sfc", "port", "chain", "set", "--name", "pc1b", "--description", "web chain", "pc1")
    shown = osc_json("sfc", "port", "chain", "show", "pc1b")
    eq(shown["Description"], "web chain", "chain show")
    eq(len(shown["Port Pair Groups"]), 1, "chain groups")
    eq(names(osc_json("sfc", "port", "chain", "list")), ["pc1b", "pc2"], "chain list")
    # A group in use cannot go.
    osc_fails("sfc", "port", "pair", "group", "delete", "ppg1b")

    # --- service graphs -------------------------------------------------------------------
    osc_json("sfc", "service", "graph", "create", "--branching-point", "pc1b:pc2", "sg1")
    osc("sfc", "service", "graph", "set", "--name", "sg1b", "--description", "web then dns",
        "sg1")
    shown = osc_json("sfc", "service", "graph", "show", "sg1b")
    eq(shown["Description"], "web then dns", "graph show")
    eq(names(osc_json("sfc", "service", "graph", "list")), ["sg1b"], "graph list")
    # A chain in a graph cannot go.
    osc_fails("sfc", "port", "chain", "delete", "pc2")

    # The installed `openstack` executable, once, as a person would run it.
    out = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "openstack"), *AUTH,
         "sfc", "port", "chain", "list", "-f", "json"],
        capture_output=True, text=True, check=False, timeout=120)
    if out.returncode != 0:
        raise Failure(f"openstack executable failed: {out.stderr}")
    eq(names(json.loads(out.stdout)), ["pc1b", "pc2"], "openstack executable")

    # --- deletes, dependents first --------------------------------------------------------
    osc("sfc", "service", "graph", "delete", "sg1b")
    osc("sfc", "port", "chain", "delete", "pc1b", "pc2")
    osc("sfc", "flow", "classifier", "delete", "fc-web", "fc-dns")
    osc("sfc", "port", "pair", "group", "delete", "ppg1b", "ppg2")
    osc("sfc", "port", "pair", "delete", "pp1b", "pp2")
    for p in ("src", "dst", "sf1-in", "sf1-out", "sf2-in", "sf2-out"):
        osc("port", "delete", p)
    osc("subnet", "delete", "sub1")
    osc("network", "delete", "net1")
    for what in (["network"], ["subnet"], ["port"], ["sfc", "port", "pair"],
                 ["sfc", "port", "pair", "group"], ["sfc", "flow", "classifier"],
                 ["sfc", "port", "chain"], ["sfc", "service", "graph"]):
        eq(osc_json(*what, "list"), [], f"{' '.join(what)} list after deletes")
    osc_fails("network", "show", "net1")


if __name__ == "__main__":
    try:
        main()
    except Failure as e:
        print(f"scenario failed after {steps} commands: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"openstack client scenario: {steps} commands, all as expected")
