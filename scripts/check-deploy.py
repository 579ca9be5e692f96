"""The checks of scripts/check-deploy past the Kubernetes schemas (see that script).

    python3 scripts/check-deploy.py ROOT BIN MANIFEST...

Prints one `FILE: FIELD: problem` line per problem; exit 1 when there is any.
"""

import math
import os
import re
import shlex
import subprocess
import sys
try:
    import tomllib
except ImportError:  # Python < 3.11: the same parser from PyPI
    import tomli as tomllib

try:
    import yaml
except ImportError:
    sys.exit("check-deploy: PyYAML missing: run with the python3 of kubernetes-validate's venv first on PATH")

# One process holds one socket per device and may hold at most this many open files on
# many machines (BENCHMARKS.md: a hard RLIMIT_NOFILE of 20,000); the fleet keeps 64 for
# itself (src/fleet_cmd.rs refuses a run past the limit).
OPEN_FILES = 20_000
FLEET_OWN_FILES = 64
# Resident memory per real-socket device, rounded up from BENCHMARKS.md (18-22 KiB
# against Mosquitto, 27 KiB on the virtual clock).
KIB_PER_DEVICE = 30
# The binary reads these variables itself; any other variable the Job sets must be used
# in its args as $(NAME).
BINARY_ENV_PREFIX = "TASMOTA_SIM_"
CREDENTIAL = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|(^|_)USER($|_)|(^|_)KEY($|_)", re.I)

problems = []


def problem(where, what):
    problems.append(f"{where}: {what}")


def rel(root, path):
    return os.path.relpath(path, root)


def quantity(text):
    """A Kubernetes memory quantity in bytes (128Mi, 1Gi, 500M, 1048576)."""
    m = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(text))
    if not m:
        return None
    scale = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[m.group(2)]
    return float(m.group(1)) * scale


def help_text(binary, args):
    """`BIN args --help`, or None (with the problem noted)."""
    cmd = [binary, *args, "--help"]
    shown = " ".join([os.path.basename(binary), *args, "--help"])
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except OSError as e:
        problem(binary, f"`{shown}` could not run: {e.strerror} (build it: cargo build --release --locked)")
        return None, shown
    if run.returncode != 0:
        tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or [""]
        problem(binary, f"`{shown}` exited {run.returncode}: {tail[0]}")
        return None, shown
    return run.stdout, shown


def has_flag(help_out, flag):
    """Whether clap's help defines FLAG (`      --devices <N>`, `  -q, --quiet`)."""
    if flag.startswith("--"):
        pat = rf"^\s*(?:-[A-Za-z0-9], )?{re.escape(flag)}(?:[ =<\[,]|$)"
    else:
        pat = rf"^\s*{re.escape(flag)}(?:,|[ <]|$)"
    return re.search(pat, help_out, re.M) is not None


def names_env(help_out, name):
    """Whether clap's help says the binary reads NAME (`[env: NAME=]`, `[env: NAME]`)."""
    flat = re.sub(r"\s+", " ", help_out)
    return re.search(rf"\[env: {re.escape(name)}[=\]]", flat) is not None


def check_manifests(root, files, fleet_help, fleet_shown):
    """(a) beyond the schemas, and (c) for the Job's args and env."""
    docs = []
    for path in files:
        try:
            with open(path) as f:
                for doc in yaml.safe_load_all(f):
                    if doc:
                        docs.append((path, doc))
        except (OSError, yaml.YAMLError) as e:
            problem(rel(root, path), f"cannot read: {e}")
    configmaps = {d["metadata"]["name"]: d.get("data") or {}
                  for _, d in docs if d.get("kind") == "ConfigMap" and "metadata" in d}
    for path, doc in docs:
        f = rel(root, path)
        kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name")
        if kind == "ConfigMap":
            for key in (doc.get("data") or {}):
                if CREDENTIAL.search(key):
                    problem(f"{f}: configmap/{name}", f"data.{key}: a credential must come from a Secret, not a ConfigMap")
        if kind == "Secret":
            problem(f"{f}: secret/{name}", "a Secret in the manifest: credentials are created with kubectl (deploy/README.md), never committed")
        if kind == "Job":
            check_job(root, f"{f}: job/{name}", doc, configmaps, fleet_help, fleet_shown)
    if not any(d.get("kind") == "Job" for _, d in docs):
        problem("deploy/k8s", "no Job: the fleet runs as an Indexed Job")


def check_job(root, where, job, configmaps, fleet_help, fleet_shown):
    spec = job.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    if spec.get("completionMode") != "Indexed":
        got = spec.get("completionMode")
        problem(where, "spec.completionMode: is missing: must be Indexed (each pod gets JOB_COMPLETION_INDEX)" if got is None
                else f"spec.completionMode: {got}: must be Indexed (each pod gets JOB_COMPLETION_INDEX)")
    if pod.get("restartPolicy") != "Never":
        problem(where, f"spec.template.spec.restartPolicy: {pod.get('restartPolicy')}: must be Never "
                "(a shard restarted in place boots its devices again and prints a second report)")
    # A retried shard counts its devices twice in the merge.
    if spec.get("backoffLimitPerIndex") is not None:
        if spec["backoffLimitPerIndex"] != 0:
            problem(where, f"spec.backoffLimitPerIndex: {spec['backoffLimitPerIndex']}: must be 0 (a retried shard's report would count twice)")
    elif spec.get("backoffLimit") != 0:
        problem(where, f"spec.backoffLimitPerIndex: is missing and spec.backoffLimit is {spec.get('backoffLimit', '6 (the default)')}: "
                "set backoffLimitPerIndex: 0 (or backoffLimit: 0) so a failed shard is not retried (its report would count twice)")
    if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
        problem(where, "spec.template.spec.securityContext.runAsNonRoot: must be true")

    containers = pod.get("containers") or []
    if len(containers) != 1:
        problem(where, f"spec.template.spec.containers: {len(containers)} containers: expected the one fleet container")
        return
    c = containers[0]
    cw = f"{where}: container {c.get('name')}"
    sc = c.get("securityContext") or {}
    if sc.get("readOnlyRootFilesystem") is not True:
        problem(cw, "securityContext.readOnlyRootFilesystem: must be true")
    if sc.get("allowPrivilegeEscalation") is not False:
        problem(cw, "securityContext.allowPrivilegeEscalation: must be false")
    if sc.get("privileged") is True:
        problem(cw, "securityContext.privileged: must not be true")
    if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
        problem(cw, f"securityContext.capabilities.drop: {(sc.get('capabilities') or {}).get('drop')}: must be [ALL]")
    if c.get("command") and os.path.basename(str(c["command"][0])) != "tasmota-sim":
        problem(cw, f"command: {c['command']}: the image's ENTRYPOINT is the binary; leave command out")

    # The container's variables: literal values and ConfigMap keys; Secrets for credentials.
    env = {}
    for e in c.get("env") or []:
        n = e.get("name")
        ref = (e.get("valueFrom") or {})
        if "value" in e:
            env[n] = str(e["value"])
            if CREDENTIAL.search(n):
                problem(cw, f"env: {n}: a credential must come from a Secret (secretKeyRef), not a value in the manifest")
        elif "configMapKeyRef" in ref:
            cm, key = ref["configMapKeyRef"].get("name"), ref["configMapKeyRef"].get("key")
            if cm not in configmaps or key not in configmaps[cm]:
                problem(cw, f"env: {n}: configMapKeyRef {cm}/{key}: no such ConfigMap key in deploy/k8s (the pod would not start)")
            else:
                env[n] = str(configmaps[cm][key])
            if CREDENTIAL.search(n):
                problem(cw, f"env: {n}: a credential must come from a Secret, not a ConfigMap")
        elif "secretKeyRef" in ref:
            env[n] = None
            check_secret_documented(root, cw, n, ref["secretKeyRef"])
        else:
            env[n] = None
    if c.get("envFrom"):
        problem(cw, "envFrom: name each variable in env instead, so this check sees what the binary is given")

    args = [str(a) for a in c.get("args") or []]
    used_vars = set()
    for a in args:
        for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", a):
            used_vars.add(var)
            if var not in env:
                problem(cw, f"args: {a}: $({var}) is not set in env (Kubernetes would pass it literally)")
    for n in env:
        if not n.startswith(BINARY_ENV_PREFIX) and n not in used_vars:
            problem(cw, f"env: {n}: set but neither read by tasmota-sim ({BINARY_ENV_PREFIX}*) nor used in args as $({n})")

    def resolved(a):
        return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1)) or m.group(0), a)

    if not args or args[0] != "fleet":
        problem(cw, f"args: {args[:1]}: must start with the subcommand fleet")
        return
    values = {}
    i = 1
    while i < len(args):
        a = args[i]
        if a.startswith("--") and "=" in a:
            flag, v = a.split("=", 1)
            values[flag] = resolved(v)
        elif a.startswith("-") and a != "-":
            flag = a
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is not None and (nxt == "-" or not nxt.startswith("-")):
                values[flag] = resolved(nxt)
                i += 1
            else:
                values[flag] = None
        else:
            problem(cw, f"args: {a}: a value without a flag")
            i += 1
            continue
        if fleet_help is not None and not has_flag(fleet_help, flag):
            problem(cw, f"args: {flag}: not in `{fleet_shown}`")
        i += 1

    if values.get("--json") != "-":
        problem(cw, "args: --json -: missing (each pod prints its report as one JSON line on stdout)")
    shards = values.get("--shards")
    if shards is None or not shards.isdigit():
        problem(cw, f"args: --shards: {shards}: must be the shard count (a number)")
        return
    shards = int(shards)
    for field in ("completions", "parallelism"):
        if spec.get(field) != shards:
            problem(where, f"spec.{field}: {spec.get(field)}, but --shards is {shards}: completions = parallelism = --shards")
    if fleet_help is not None and "JOB_COMPLETION_INDEX" not in fleet_help:
        problem(cw, f"args: --shards: JOB_COMPLETION_INDEX: not named in `{fleet_shown}` (each pod would not know its shard)")
    devices = values.get("--devices")
    if devices is None or not devices.isdigit():
        problem(cw, f"args: --devices: {devices}: must be a number (it sizes the pods)")
        return
    per_pod = math.ceil(int(devices) / shards)
    if per_pod + FLEET_OWN_FILES > OPEN_FILES:
        problem(cw, f"args: --devices {devices} --shards {shards}: {per_pod} devices per pod need {per_pod + FLEET_OWN_FILES} "
                f"open files, over the {OPEN_FILES} one process may hold on many machines: add shards")
    need = per_pod * KIB_PER_DEVICE * 1024
    limits = (c.get("resources") or {}).get("limits") or {}
    requests = (c.get("resources") or {}).get("requests") or {}
    if "memory" not in limits or "memory" not in requests:
        problem(cw, "resources: requests.memory and limits.memory: both needed (sized from the devices per pod)")
    else:
        have = quantity(limits["memory"])
        if have is None or have < need:
            problem(cw, f"resources.limits.memory: {limits['memory']}: below {per_pod} devices x {KIB_PER_DEVICE} KiB = "
                    f"{math.ceil(need / 2**20)}Mi")
    if fleet_help is not None:
        for n in env:
            if n.startswith(BINARY_ENV_PREFIX) and not names_env(fleet_help, n):
                problem(cw, f"env: {n}: not named in `{fleet_shown}` (no [env: {n}=]): the binary would ignore it")


def check_secret_documented(root, where, var, ref):
    """The Secret the Job reads is the one deploy/README.md tells how to create."""
    name, key = ref.get("name"), ref.get("key")
    readme = os.path.join(root, "deploy", "README.md")
    try:
        text = open(readme).read()
    except OSError:
        problem(where, f"env: {var}: secretKeyRef {name}/{key}: deploy/README.md is missing (it shows how to create the Secret)")
        return
    flat = re.sub(r"\\\n", " ", text)
    for m in re.finditer(r"kubectl create secret generic (\S+)([^\n]*)", flat):
        if m.group(1) == name and re.search(rf"--from-(?:literal|file)={re.escape(key)}=", m.group(2)):
            return
    problem(where, f"env: {var}: secretKeyRef {name}/{key}: deploy/README.md has no `kubectl create secret generic {name} --from-literal={key}=...`")


def check_readme_commands(root, fleet_help, fleet_shown, merge_help, merge_shown):
    """(c) the flags of the `tasmota-sim fleet` and `fleet merge` commands in deploy/README.md."""
    readme = os.path.join(root, "deploy", "README.md")
    try:
        text = re.sub(r"\\\n", " ", open(readme).read())
    except OSError:
        problem("deploy/README.md", "missing")
        return
    found = False
    for line in text.splitlines():
        m = re.search(r"tasmota-sim fleet (merge )?(.*)", line)
        if not m:
            continue
        merge = m.group(1) is not None
        found = found or merge
        shown, help_out = (merge_shown, merge_help) if merge else (fleet_shown, fleet_help)
        try:
            words = shlex.split(m.group(2).split("`")[0], comments=True)
        except ValueError:
            words = m.group(2).split()
        for w in words:
            if w in ("|", ">", ">>", "&", "&&", ";"):
                break
            if w.startswith("-") and w != "-":
                flag = w.split("=", 1)[0]
                if help_out is not None and not has_flag(help_out, flag):
                    what = "tasmota-sim fleet merge" if merge else "tasmota-sim fleet"
                    problem(f"deploy/README.md: {what}", f"{flag}: not in `{shown}`")
    if not found:
        problem("deploy/README.md", "no `tasmota-sim fleet merge` command (how the shards' reports become one)")


def check_dockerfile(root):
    """(b) the binary it builds exists, its Rust is the pinned one, it runs as non-root."""
    path = os.path.join(root, "deploy", "Dockerfile")
    f = "deploy/Dockerfile"
    try:
        text = open(path).read()
    except OSError:
        problem(f, "missing")
        return
    logical = re.sub(r"\\\n", " ", text)
    lines = [l.strip() for l in logical.splitlines() if l.strip() and not l.strip().startswith("#")]

    with open(os.path.join(root, "rust-toolchain.toml"), "rb") as t:
        channel = tomllib.load(t)["toolchain"]["channel"]
    froms = [next(w for w in l.split()[1:] if not w.startswith("--"))
             for l in lines if l.upper().startswith("FROM ")]
    rust = [img for img in froms if re.match(r"(docker\.io/)?(library/)?rust:", img)]
    if not rust:
        problem(f, f"FROM: no rust:{channel} builder image")
    for img in rust:
        tag = img.split(":", 1)[1].split("@")[0]
        version = tag.split("-")[0]
        if version != channel:
            problem(f, f"FROM {img}: the builder's Rust is {version}, but rust-toolchain.toml pins {channel}")

    for l in lines:
        m = re.match(r"ENV\s+RUSTUP_TOOLCHAIN[= ](\S+)", l)
        if m and m.group(1).strip("\"'") != channel:
            problem(f, f"ENV RUSTUP_TOOLCHAIN={m.group(1)}: but rust-toolchain.toml pins {channel}")

    builds = [l for l in lines if re.search(r"\bcargo build\b", l)]
    if not builds:
        problem(f, "no `cargo build` step")
    with open(os.path.join(root, "Cargo.toml"), "rb") as t:
        cargo = tomllib.load(t)
    bins = {b["name"] for b in cargo.get("bin", [])}
    if "package" in cargo and os.path.exists(os.path.join(root, "src", "main.rs")) \
            and cargo["package"].get("autobins", True):
        bins.add(cargo["package"]["name"])
    built = []
    for l in builds:
        cmd = l[l.index("cargo build"):].split("&&")[0].split()
        for flag in ("--release", "--locked"):
            if flag not in cmd:
                problem(f, f"cargo build: {flag} missing (the image is the release binary of Cargo.lock's versions)")
        if "--bin" not in cmd or cmd.index("--bin") + 1 >= len(cmd):
            problem(f, "cargo build: no --bin NAME")
            continue
        name = cmd[cmd.index("--bin") + 1]
        built.append(name)
        if name not in bins:
            problem(f, f"cargo build --bin {name}: no such binary in Cargo.toml (binaries: {', '.join(sorted(bins)) or 'none'})")
    entry = [l for l in lines if l.upper().startswith("ENTRYPOINT")]
    if not entry:
        problem(f, "ENTRYPOINT: missing (the Job's args start with the subcommand)")
    elif built and not any(b in entry[-1] for b in built):
        problem(f, f"{entry[-1]}: does not run the binary it builds ({', '.join(built)})")
    users = [l.split(None, 1)[1] for l in lines if l.upper().startswith("USER ")]
    user = users[-1].split(":")[0] if users else None
    if user is None or not user.isdigit() or user == "0":
        problem(f, f"USER {users[-1] if users else '(none)'}: the runtime must run as a numeric non-root user "
                "(runAsNonRoot can only verify a number)")


def main():
    root, binary, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    fleet_help, fleet_shown = help_text(binary, ["fleet"])
    merge_help, merge_shown = help_text(binary, ["fleet", "merge"])
    check_manifests(root, files, fleet_help, fleet_shown)
    check_readme_commands(root, fleet_help, fleet_shown, merge_help, merge_shown)
    check_dockerfile(root)
    for p in problems:
        print(p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
