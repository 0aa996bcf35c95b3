/*
 * Test-only LD_PRELOAD shim for criu < 4.2 on Linux >= 6.16.
 *
 * Linux 6.16 made SO_PASSCRED and SO_PASSSEC AF_UNIX/AF_NETLINK/AF_BLUETOOTH-only:
 * getsockopt() on a TCP or UDP socket now fails with EOPNOTSUPP, and criu 4.1.1
 * then refuses to dump any inet socket ("Can't get 1:16 opt"). criu 4.2 (commit
 * 4b7398595, "Restrict SO_PASSCRED and SO_PASSSEC to supported families") skips
 * the two options for those families, i.e. treats them as 0. This shim does the
 * same for the criu under test, and nothing else.
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
		errno = 0;
		return 0;
	}
	return ret;
}
