# shellcheck shell=bash
# Sourced by fibd's scripts and deployment tests.
#
# is_child PID [PARENT]: true while PID is a child of PARENT (default: this shell) that has
# not been reaped. Once reaped (bash reaps an exited background job by itself), the number
# may be handed to any process or thread on the machine, so a cleanup must check before it
# signals a pid it saved long ago: a late `kill -9` once killed a soak running beside the
# tests, through one of its threads.
is_child() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "$(echo "$stat" | cut -d' ' -f2)" = "${2:-$$}" ]
}
