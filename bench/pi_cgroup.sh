# Sourced through BASH_ENV by the bash that runs ./run.sh, before run.sh's first
# line, in run.sh's own process (bench --pi; see Rig._pi_enter in common.py).
# It moves that process into the service's memory cgroup and onto CPU 0 before
# it has forked anything, so every process run.sh starts is born inside both:
# no process is ever moved after the fact, and no memory is charged elsewhere.
unset BASH_ENV  # once, for run.sh: not for anything its children run
echo $$ >"$BENCH_PI_CGROUP/cgroup.procs" || {
    echo "bench --pi: could not join the cgroup $BENCH_PI_CGROUP" >&2
    exit 1
}
unset BENCH_PI_CGROUP
# stdout is where run.sh prints the API key: taskset's report goes nowhere
taskset -pc 0 $$ >/dev/null || {
    echo "bench --pi: taskset -pc 0 failed" >&2
    exit 1
}
