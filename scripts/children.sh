# shellcheck shell=bash
# Sourced by fibd's scripts and deployment tests.
#
# is_child PID [PARENT]: true while PID is a child of PARENT (default: this shell) that has
# not been reaped. Once reaped (bash reaps an exited background job by itself), the number
# may be handed to any process or thread on the machine, so a cleanup must check before it
# signals a pid it saved long ago: a late `kill -9` once killed a soak running beside the
# tests, through one of its threads.
#
# A thread's id has a /proc entry too, showing its process's parent: the number must also
# name a whole process (its thread group id is itself), or a reused number that is now a
# thread of another of our children would pass, and a signal to it kill that child.
is_child() {
    local stat tgid
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    tgid=$(sed -n 's/^Tgid:[[:space:]]*//p' "/proc/$1/status" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "$tgid" = "$1" ] && [ "$(echo "$stat" | cut -d' ' -f2)" = "${2:-$$}" ]
}
