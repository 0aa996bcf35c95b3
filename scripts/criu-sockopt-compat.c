/*
 * criu-sockopt-compat: an LD_PRELOAD shim for criu < 4.2 on Linux >= 6.16.
 *
 * Linux 6.16 restricted SO_PASSCRED and SO_PASSSEC to the socket families that
 * support them (unix, netlink, bluetooth): getsockopt() on an INET socket now
 * fails with EOPNOTSUPP. criu 4.1.x asks for both options on every socket it
 * dumps and aborts the dump of any process with a TCP or UDP socket. criu 4.2
 * asks only where the options exist (upstream commit 4b7398595, "criu/sockets:
 * Restrict SO_PASSCRED and SO_PASSSEC to supported families").
 *
 * This shim makes exactly that failure report the truth instead: the option is
 * off (0). Everything else goes to libc untouched. criu only ever restores the
 * options when they were on, so restore needs no change.
 *
 *   cc -shared -fPIC -O2 -o criu-sockopt-compat.so criu-sockopt-compat.c -ldl
 *   LD_PRELOAD=$PWD/criu-sockopt-compat.so criu dump ...
 *
 * The demo (python -m demo) builds and uses it only when the
 * running kernel refuses the options and criu is older than 4.2.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*getsockopt_fn)(int, int, int, void *, socklen_t *);

int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
	static getsockopt_fn real;
	int ret;

	if (!real)
		real = (getsockopt_fn)dlsym(RTLD_NEXT, "getsockopt");
	ret = real(fd, level, name, val, len);
	if (ret < 0 && errno == EOPNOTSUPP && level == SOL_SOCKET &&
	    (name == SO_PASSCRED || name == SO_PASSSEC) && val && len && *len >= sizeof(int)) {
		memset(val, 0, sizeof(int));
		*len = sizeof(int);
		return 0;
	}
	return ret;
}
