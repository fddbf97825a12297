/*
 * pause: holds the network namespace that `app` and `proxy` share, like a Kubernetes pod's infra
 * container, and does nothing else.
 *
 * Why it exists: Docker gives a container a new network namespace every time it starts. If the proxy
 * joined the app's namespace (`network_mode: "service:app"`), `docker compose restart app` would
 * leave the proxy listening in the dead namespace and the published port pointing at the new one, so
 * the proxy could neither answer 502 while the app is down nor recover. A holder that never restarts
 * lets either sidecar restart on its own. Kubernetes' build/pause/linux/pause.c is the same idea.
 *
 * It runs as PID 1, which gets no default action for SIGTERM/SIGINT: handle them so that
 * `docker compose stop` ends it at once instead of after the grace period.
 */
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

static void on_stop(int sig) {
    (void)sig;
    _exit(0);
}

int main(void) {
    struct sigaction stop = {0};
    stop.sa_handler = on_stop;
    if (sigaction(SIGTERM, &stop, NULL) != 0 || sigaction(SIGINT, &stop, NULL) != 0) {
        return 64;
    }
    for (;;) {
        pause();
    }
}
