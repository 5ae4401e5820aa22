"""What the kernel says about a process: state, children, CPU, memory, TCP sockets.

Linux /proc only. Tests and benchmarks measure the proxy from the outside
with these (which worker holds a connection, how much CPU a request cost),
so the proxy needs no debug endpoints. CPU times are in clock ticks of
``os.sysconf("SC_CLK_TCK")``, which is not always 100.
"""

import os

__all__ = ["CLK_TCK", "process_state", "gone", "children", "process_tree", "cpu_seconds",
           "rss_bytes", "machine_busy_seconds", "socket_inodes", "socket_inode",
           "holder", "tcp_rows", "connections", "established"]

CLK_TCK = os.sysconf("SC_CLK_TCK")
ESTABLISHED = "01"  # the st column of /proc/net/tcp


def _stat_fields(pid):
    """The fields of /proc/<pid>/stat after the command name: [state, ppid, ...].

    The command name is in parentheses and may itself hold spaces and ')'.
    """
    with open("/proc/%d/stat" % pid) as f:
        data = f.read()
    return data[data.rindex(")") + 2:].split()


def process_state(pid):
    """(state letter, ppid) of a process, or None once it is gone."""
    try:
        fields = _stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[1])


def gone(pid):
    """True when no process has this pid, or only a zombie waiting to be reaped."""
    state = process_state(pid)
    return state is None or state[0] == "Z"


def _parents():
    """{ppid: [pid, ...]} over every process, zombies included."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            state = process_state(int(name))
            if state is not None:
                out.setdefault(state[1], []).append((int(name), state[0]))
    return out


def children(pid):
    """Pids of the live (not zombie) child processes of pid, sorted."""
    return sorted(p for p, state in _parents().get(pid, ()) if state != "Z")


def process_tree(pid):
    """pid and all its descendants (the proxy's gunicorn workers, for instance)."""
    parents = _parents()
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(child for child, _state in parents.get(p, ()))
    return tree


def cpu_seconds(pid, descendants=False):
    """User plus system CPU time of pid, in seconds.

    With descendants, of its whole tree, including children already reaped
    (cutime, cstime), so workers that came and went still count.
    """
    total = 0
    for p in process_tree(pid) if descendants else [pid]:
        try:
            f = _stat_fields(p)
        except OSError:
            if p == pid:
                raise
            continue
        # utime stime cutime cstime: fields 14-17 of stat, 11-14 after the name
        total += int(f[11]) + int(f[12])
        if descendants:
            total += int(f[13]) + int(f[14])
    return total / CLK_TCK


def rss_bytes(pid, descendants=False):
    """Resident memory (VmRSS) of pid, or of its live tree summed, in bytes."""
    total = 0
    for p in process_tree(pid) if descendants else [pid]:
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def machine_busy_seconds():
    """CPU time the whole machine spent busy (all cores summed), from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:9]]
    # user nice system idle iowait irq softirq steal
    return (sum(vals) - vals[3] - vals[4]) / CLK_TCK


def socket_inodes(pids):
    """Inodes of every socket the given processes hold open."""
    inodes = set()
    for p in pids:
        fd_dir = "/proc/%d/fd" % p
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in names:
            try:
                link = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    return inodes


def tcp_rows(pid="self"):
    """(local port, remote port, state, inode) of each TCP socket in pid's namespace."""
    for table in ("tcp", "tcp6"):
        try:
            with open("/proc/%s/net/%s" % (pid, table)) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) >= 10:
                yield (int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16),
                       fields[3], int(fields[9]))


def socket_inode(local_port, remote_port):
    """Inode of the TCP socket from local_port to remote_port, or None.

    With the proxy's port as local_port and a client's as remote_port: the
    proxy's end of that client connection.
    """
    for local, remote, _state, inode in tcp_rows():
        if local == local_port and remote == remote_port:
            return inode
    return None


def holder(sock, pids):
    """The one of ``pids`` holding the server side of this connected client socket, or
    None (not accepted yet, or held by none or several of them)."""
    try:
        inode = socket_inode(sock.getpeername()[1], sock.getsockname()[1])
    except OSError:  # not connected yet
        return None
    owners = [pid for pid in pids if inode in socket_inodes([pid])]
    return owners[0] if len(owners) == 1 else None


def connections(pid, ports):
    """(local port, remote port) of each established TCP connection from pid's tree
    to one of ``ports``: a connection that stays open keeps its local port."""
    inodes = socket_inodes(process_tree(pid))
    return sorted((local, remote) for local, remote, state, inode in tcp_rows(pid)
                  if state == ESTABLISHED and remote in ports and inode in inodes)


def established(pid, ports):
    """Established TCP connections from pid's tree to each port in ports, as a list.

    Counted from the kernel's socket table and the processes' descriptors,
    so it shows what the kernel sees, not what the proxy believes it has.
    """
    inodes = socket_inodes(process_tree(pid))
    want = {p: 0 for p in ports}
    for _local, remote, state, inode in tcp_rows(pid):
        if state == ESTABLISHED and remote in want and inode in inodes:
            want[remote] += 1
    return [want[p] for p in ports]
