/* buildruntime's step placeholder: ignores its arguments and the path it was started
 * as, sleeps until SIGTERM or SIGINT and then exits 0. Reaps children in case it is
 * PID 1 of a shared PID namespace.
 *
 * The image links this one binary at every path in `paths` (and at /placeholder, its
 * ENTRYPOINT), so a step container whose command is `/bin/sh -c script` starts on it
 * and sleeps until the runtime swaps in the step's image. Built static, so the image
 * needs nothing else: see the Dockerfile beside it. The local test cluster builds its
 * pause image from it too. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) { (void)sig; _exit(0); }

static void on_child(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(int argc, char **argv) {
  (void)argc;
  (void)argv;
  struct sigaction sa = {0};
  sa.sa_handler = on_stop;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  struct sigaction sc = {0};
  sc.sa_handler = on_child;
  sc.sa_flags = SA_NOCLDSTOP | SA_RESTART;
  sigaction(SIGCHLD, &sc, NULL);
  for (;;) pause();
  return 0;
}
