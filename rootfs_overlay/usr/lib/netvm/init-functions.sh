# Shell functions of the driver VM's /init (sbin/netvm-init). POSIX sh: busybox ash in
# the guest; the host's sh runs them in tests. Paths and delays are variables so tests
# can point them at a fake sysfs and shorten the waits.

: "${NETVM_SYSFS_NET:=/sys/class/net}"
# Back-off between driver restarts, in seconds; the last value repeats. A driver that
# dies at start-up (bad config, missing UIO device) must not spin the single CPU.
: "${NETVM_RESTART_DELAYS:=1 2 4 8 16 30}"
# A driver that ran this long failed for a new reason: start the back-off over.
: "${NETVM_STABLE_SECONDS:=60}"

# Boot-time note: everything below runs before the driver starts, and under QEMU's TCG
# each fork+exec of busybox costs about 40 ms. So the helpers use shell builtins (read,
# case, test) where a command would do the same.

# is_mounted DIR: busybox's mountpoint applet is not in every build; /proc/mounts is.
is_mounted() {
	[ -r /proc/mounts ] || return 1
	while read -r _dev _dir _rest; do
		[ "$_dir" = "$1" ] && return 0
	done </proc/mounts
	return 1
}

# read_uptime: whole seconds since boot into $_uptime (no `date`, no subshell).
read_uptime() {
	read -r _up _idle </proc/uptime
	_uptime=${_up%%.*}
}

netvm_log() {
	echo "netvm-init: $*" >&2
}

# wait_for_carrier IFACE TIMEOUT_SECONDS: 0 as soon as the link has carrier, 1 after
# the timeout. Polls every 100 ms: a PHY takes 1-3 s to negotiate, so a fixed sleep is
# either too short or wasted boot time.
wait_for_carrier() {
	_ticks=$(($2 * 10))
	while [ "$_ticks" -gt 0 ]; do
		_carrier=0
		# A down link makes the read fail (EINVAL): that counts as no carrier.
		read -r _carrier <"$NETVM_SYSFS_NET/$1/carrier" 2>/dev/null
		[ "$_carrier" = 1 ] && return 0
		sleep 0.1
		_ticks=$((_ticks - 1))
	done
	return 1
}

# supervise CMD [ARGS...]: run CMD forever, restarting it with back-off when it exits.
# Returns only when NETVM_SUPERVISE_MAX (tests) restarts have happened.
supervise() {
	_delays=$NETVM_RESTART_DELAYS
	_restarts=0
	while :; do
		read_uptime
		_started=$_uptime
		"$@"
		_status=$?
		read_uptime
		_ran=$((_uptime - _started))
		if [ "$_ran" -ge "$NETVM_STABLE_SECONDS" ]; then
			_delays=$NETVM_RESTART_DELAYS
		fi
		_delay=${_delays%% *}
		# Drop the head of the list unless it is the last value, which repeats.
		[ "$_delays" != "$_delay" ] && _delays=${_delays#* }
		_restarts=$((_restarts + 1))
		netvm_log "$1 exited with status $_status after ${_ran}s; restart $_restarts in ${_delay}s"
		if [ -n "$NETVM_SUPERVISE_MAX" ] && [ "$_restarts" -ge "$NETVM_SUPERVISE_MAX" ]; then
			return 0
		fi
		sleep "$_delay"
	done
}

# disable_offloads IFACE: frames must reach the raw socket as they were on the wire
# (no GRO super-frames) and leave as the clients built them. ethtool when the rootfs
# has it; the driver also turns them off itself when it starts.
disable_offloads() {
	if command -v ethtool >/dev/null 2>&1; then
		ethtool -K "$1" gro off gso off tso off rx off tx off >/dev/null 2>&1 || true
	fi
}
