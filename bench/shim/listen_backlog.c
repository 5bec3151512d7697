/* LD_PRELOAD shim for the benchmark's OpenSMTPD: raises the backlog of every listen(2) call to
 * BENCH_LISTEN_BACKLOG (default 1024). OpenSMTPD 6.8 compiles its backlog in (SMTPD_BACKLOG 5) and has
 * no setting for it; with 20 or 100 clients reconnecting for every message the accept queue overflows
 * and each dropped SYN costs the client a 1 s (then 3 s) retransmission, which measures the constant,
 * not the server. Postfix, Exim (smtp_connect_backlog, set to 1024 in bench/exim.sh) and tern (8192) listen
 * with a larger queue. Built by bench/opensmtpd.sh setup; used for the bench instance only. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/socket.h>

int listen(int fd, int backlog)
{
	static int (*real_listen)(int, int);
	const char *v = getenv("BENCH_LISTEN_BACKLOG");
	int want = v != NULL ? atoi(v) : 1024;

	if (real_listen == NULL)
		real_listen = (int (*)(int, int))dlsym(RTLD_NEXT, "listen");
	if (real_listen == NULL)
		return -1;
	if (backlog < want)
		backlog = want;
	return real_listen(fd, backlog);
}
