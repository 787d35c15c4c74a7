# shellcheck shell=bash
# Supervision for scripts/up: start services in the background, start one
# again when it dies (with backoff, as compose's `restart: unless-stopped`
# or a Kubernetes Deployment would), give up on one that keeps dying, and
# stop them all cleanly. Sourced, not run; scripts/lib/test-supervise tests
# it against tiny fake services.
#
#   sv_start NAME LOG COMMAND...   start a service, print `started NAME (pid N, log LOG)`
#   sv_supervise                   watch until sv_stop_all: restart what dies
#   sv_check                       one round of that (sv_supervise's body)
#   sv_stop_all                    SIGTERM everything, SIGKILL what is left after the grace period
#
# The caller defines `say MESSAGE` (how a line reaches the console).
#
# The policy, each part adjustable through the environment:
#   - a service that dies is started again after a delay that doubles with
#     each death in a row: SUPERVISE_BACKOFF_MS (1000) first, at most
#     SUPERVISE_BACKOFF_MAX_MS (30000);
#   - a service that ran SUPERVISE_STABLE_MS (60000) before dying was
#     healthy: its count of deaths in a row starts again from zero;
#   - after SUPERVISE_MAX_RESTARTS (5) restarts in a row that each died
#     again before becoming stable, the service is given up: reported with
#     the end of its log, and left stopped; the others keep running;
#   - sv_stop_all gives each service SUPERVISE_GRACE_SECS (15) to drain
#     after SIGTERM, then kills it.
# The exit status of a service does not matter: a clean exit that nobody
# asked for is restarted too, as `unless-stopped` does.

sv_backoff_ms=${SUPERVISE_BACKOFF_MS:-1000}
sv_backoff_max_ms=${SUPERVISE_BACKOFF_MAX_MS:-30000}
sv_stable_ms=${SUPERVISE_STABLE_MS:-60000}
sv_max_restarts=${SUPERVISE_MAX_RESTARTS:-5}
sv_grace_secs=${SUPERVISE_GRACE_SECS:-15}
# How often sv_supervise looks (seconds): also how long Ctrl-C may wait
# for the round in progress.
sv_poll=${SUPERVISE_POLL_SECS:-0.5}

# One entry per service, same index in every array.
sv_names=()   # name, as printed
sv_logs=()    # log file, as printed (appended to on each restart)
sv_cmds=()    # the command, quoted (printf %q) to be split again on restart
sv_pids=()    # pid of the current process
sv_since=()   # when it was started (ms)
sv_deaths=()  # deaths in a row, each before it became stable
sv_due=()     # when a dead service is to be started again (ms)
sv_state=()   # running | waiting (for its backoff) | given-up
sv_stopping=0 # set by sv_stop_all: nothing is restarted any more

sv_now_ms() {
    local t=${EPOCHREALTIME/[.,]/}
    echo $((t / 1000))
}

# sv_launch I: runs service I's command in the background, its output
# appended to its log. The command runs as the background process itself
# (no subshell in between), so the printed pid is the service's: `kill -9`
# of it kills the service.
sv_launch() {
    local i=$1
    local -a argv
    eval "argv=(${sv_cmds[$i]})"
    "${argv[@]}" >>"${sv_logs[$i]}" 2>&1 </dev/null &
    sv_pids[i]=$!
    sv_since[i]=$(sv_now_ms)
    sv_state[i]=running
}

sv_start() {
    local name=$1 log=$2
    shift 2
    local i=${#sv_names[@]}
    sv_names[i]=$name
    sv_logs[i]=$log
    sv_cmds[i]=$(printf '%q ' "$@")
    sv_deaths[i]=0
    sv_due[i]=0
    : >"$log"
    sv_launch "$i"
    say "started $name (pid ${sv_pids[$i]}, log $log)"
}

# sv_how STATUS: an exit status in words.
sv_how() {
    local status=$1
    if ((status > 128)); then
        echo "killed by SIG$(kill -l $((status - 128)) 2>/dev/null || echo $((status - 128)))"
    else
        echo "exited with status $status"
    fi
}

sv_check() {
    local i now status ran delay how
    ((sv_stopping)) && return 0
    for i in "${!sv_names[@]}"; do
        now=$(sv_now_ms)
        case "${sv_state[$i]}" in
            running)
                kill -0 "${sv_pids[$i]}" 2>/dev/null && continue
                # It died: collect its status (bash kept it for us).
                status=0
                wait "${sv_pids[$i]}" 2>/dev/null || status=$?
                ran=$((now - sv_since[i]))
                how=$(sv_how "$status")
                if ((ran >= sv_stable_ms)); then sv_deaths[i]=0; fi
                sv_deaths[i]=$((sv_deaths[i] + 1))
                if ((sv_deaths[i] > sv_max_restarts)); then
                    sv_state[i]=given-up
                    say "giving up on ${sv_names[$i]}: it died ${sv_deaths[$i]} times in a row, each within $((sv_stable_ms / 1000)) s of starting (last: pid ${sv_pids[$i]} $how); the others keep running. The end of its log (${sv_logs[$i]}):"
                    tail -n 20 "${sv_logs[$i]}" >&2
                    continue
                fi
                delay=$((sv_backoff_ms << (sv_deaths[i] - 1)))
                ((delay > sv_backoff_max_ms)) && delay=$sv_backoff_max_ms
                sv_due[i]=$((now + delay))
                sv_state[i]=waiting
                say "${sv_names[$i]} (pid ${sv_pids[$i]}) $how after $((ran / 1000)) s; restarting it in $((delay / 1000)).$(((delay % 1000) / 100)) s"
                ;;
            waiting)
                ((now >= sv_due[i])) || continue
                printf '\n--- restarted at %s ---\n' "$(date -u +%FT%TZ)" >>"${sv_logs[$i]}"
                sv_launch "$i"
                say "restarted ${sv_names[$i]} (pid ${sv_pids[$i]}, log ${sv_logs[$i]}, restart ${sv_deaths[$i]} of at most $sv_max_restarts in a row)"
                ;;
        esac
    done
}

sv_supervise() {
    while ((!sv_stopping)); do
        sv_check
        # Quiet: bash would report a service killed by a signal here, in
        # its own words, beside sv_check's line about it.
        { sleep "$sv_poll"; } 2>/dev/null
    done
}

# sv_running: the indices of the services that have a process.
sv_running() {
    local i
    for i in "${!sv_names[@]}"; do
        [[ "${sv_state[$i]}" == running ]] && echo "$i"
    done
    return 0
}

sv_stop_all() {
    sv_stopping=1
    local i running
    mapfile -t running < <(sv_running)
    say "stopping ${#running[@]} services"
    for i in "${running[@]}"; do kill -TERM "${sv_pids[$i]}" 2>/dev/null || true; done
    local deadline=$((SECONDS + sv_grace_secs))
    for i in "${running[@]}"; do
        while kill -0 "${sv_pids[$i]}" 2>/dev/null; do
            if ((SECONDS >= deadline)); then
                say "${sv_names[$i]} did not stop in time; killing it"
                kill -KILL "${sv_pids[$i]}" 2>/dev/null || true
                break
            fi
            sleep 0.2
        done
        wait "${sv_pids[$i]}" 2>/dev/null || true
        sv_state[i]=stopped
    done
}
