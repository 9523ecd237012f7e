/*
 * The kernel's share of a container start above N store paths: what the
 * mount syscalls that containerd, its shim and runc make cost by themselves.
 * Compiled and run by bench/nix-start/main.ts as root:
 *
 *   mountcost WORKDIR < store-paths     (one path per line)
 *
 * Everything happens in a private mount namespace of this process (made
 * private recursively first, so nothing propagates to the host's), on a
 * tmpfs at WORKDIR; the namespace goes away with the process. Prints one
 * JSON object of microseconds:
 *   mount     N read-only bind mounts as containerd's mount.All makes them
 *             (mount MS_BIND|MS_REC, then a remount MS_RDONLY: 2N calls)
 *   unshare   then a child's unshare(CLONE_NEWNS) with those N mounts present
 *             (the copy of the mount table every new container's namespace
 *             makes), and unshare_exit: the child's whole life, namespace
 *             teardown on exit included, seen from the parent
 *   rbind     then one recursive bind of the tree holding them (copies N
 *             mounts; runc binds the rootfs onto itself so)
 *   detach    one umount2(MNT_DETACH) of the recursive copy (N mounts)
 *   umount    N umount2 calls, one per bind mount, deepest first
 *   base_*    unshare and unshare_exit before any bind mount, for reference
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void die(const char *what, const char *arg) {
  fprintf(stderr, "mountcost: %s %s: %s\n", what, arg ? arg : "", strerror(errno));
  exit(1);
}

static void mkdirs(char *p) {
  for (char *s = p + 1; *s; s++) {
    if (*s != '/') continue;
    *s = 0;
    if (mkdir(p, 0755) != 0 && errno != EEXIST) die("mkdir", p);
    *s = '/';
  }
  if (mkdir(p, 0755) != 0 && errno != EEXIST) die("mkdir", p);
}

/* A child that unshares its mount namespace and exits: {unshare, whole life} in µs. */
static void unshare_child(double *in_child, double *whole) {
  int fd[2];
  if (pipe(fd) != 0) die("pipe", NULL);
  double t0 = us();
  pid_t pid = fork();
  if (pid < 0) die("fork", NULL);
  if (pid == 0) {
    double a = us();
    if (unshare(CLONE_NEWNS) != 0) die("unshare", "(child)");
    double d = us() - a;
    if (write(fd[1], &d, sizeof d) != sizeof d) _exit(1);
    _exit(0);
  }
  if (read(fd[0], in_child, sizeof *in_child) != sizeof *in_child) die("read", "(child)");
  int status;
  waitpid(pid, &status, 0);
  *whole = us() - t0;
  close(fd[0]);
  close(fd[1]);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: mountcost WORKDIR < store-paths\n");
    return 2;
  }
  const char *work = argv[1];
  size_t cap = 1024, n = 0;
  char **paths = malloc(cap * sizeof *paths);
  char line[4096];
  while (fgets(line, sizeof line, stdin)) {
    line[strcspn(line, "\n")] = 0;
    if (!*line) continue;
    if (n == cap) paths = realloc(paths, (cap *= 2) * sizeof *paths);
    paths[n++] = strdup(line);
  }

  if (unshare(CLONE_NEWNS) != 0) die("unshare", NULL);
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) die("make-rprivate", "/");
  if (mount("tmpfs", work, "tmpfs", 0, "mode=0700") != 0) die("mount tmpfs", work);

  char root[4096], copy[4096];
  snprintf(root, sizeof root, "%s/root", work);
  snprintf(copy, sizeof copy, "%s/copy", work);
  mkdirs(root);
  mkdirs(copy);
  char **targets = malloc(n * sizeof *targets);
  for (size_t i = 0; i < n; i++) {
    char t[8192];
    snprintf(t, sizeof t, "%s%s", root, paths[i]);
    struct stat st;
    if (stat(paths[i], &st) != 0) die("stat", paths[i]);
    if (S_ISDIR(st.st_mode)) {
      mkdirs(t);
    } else {
      /* A store path that is a file: an empty file as its mountpoint. */
      char *slash = strrchr(t, '/');
      *slash = 0;
      mkdirs(t);
      *slash = '/';
      FILE *f = fopen(t, "w");
      if (!f) die("create", t);
      fclose(f);
    }
    targets[i] = strdup(t);
  }

  double base_unshare, base_unshare_exit;
  unshare_child(&base_unshare, &base_unshare_exit);

  double t = us();
  for (size_t i = 0; i < n; i++) {
    if (mount(paths[i], targets[i], NULL, MS_BIND | MS_REC | MS_RDONLY, NULL) != 0) die("bind", paths[i]);
    if (mount(NULL, targets[i], NULL, MS_BIND | MS_REC | MS_RDONLY | MS_REMOUNT, NULL) != 0) die("remount ro", targets[i]);
  }
  double mount_us = us() - t;

  double unshare_us, unshare_exit_us;
  unshare_child(&unshare_us, &unshare_exit_us);

  t = us();
  if (mount(root, copy, NULL, MS_BIND | MS_REC, NULL) != 0) die("rbind", root);
  double rbind_us = us() - t;
  t = us();
  if (umount2(copy, MNT_DETACH) != 0) die("umount2 detach", copy);
  double detach_us = us() - t;

  t = us();
  for (size_t i = n; i-- > 0;) {
    if (umount2(targets[i], 0) != 0) die("umount2", targets[i]);
  }
  double umount_us = us() - t;

  printf("{\"n\":%zu,\"mount\":%.1f,\"rbind\":%.1f,\"unshare\":%.1f,\"unshare_exit\":%.1f,\"detach\":%.1f,\"umount\":%.1f,\"base_unshare\":%.1f,\"base_unshare_exit\":%.1f}\n",
         n, mount_us, rbind_us, unshare_us, unshare_exit_us, detach_us, umount_us, base_unshare, base_unshare_exit);
  return 0;
}
