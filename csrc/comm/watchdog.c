/* watchdog.c: the watchdog thread beside the progress thread (see comm-impl.h for the layout).
 *
 * Every heartbeat period it sends this rank's state (what it issued, what it waits in, whether its
 * caller is blocked) to every peer on its own communicator, so a rank whose Python thread is busy
 * still answers. From the peers' states it names the lagging ranks when an operation outlives the
 * timeout, sees dead peers (their process gone on this machine, or silent for dead_after_s
 * elsewhere), and spreads a failure of one rank to all of them. */
#define _GNU_SOURCE
#include "comm-impl.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* --- the watchdog ----------------------------------------------------------------------------- */

static void hb_fill_locked(dc_comm *c, dc_hb_msg *m, int64_t now)
{
    memset(m, 0, sizeof *m);
    m->issued = c->coll_seq;
    m->completed = c->coll_done;
    m->pending_seq = -1;
    m->pending_op = -1;
    m->pending_peer = -1;
    for (dc_work *w = c->head; w; w = w->next) {
        if (w->done) continue;
        m->pending_seq = w->seq;
        m->pending_op = w->op;
        m->pending_peer = w->root;
        m->pending_ms = (now - w->t_enq) / 1000000;
        break;
    }
    m->idle_ms = c->last_issue_ns ? (now - c->last_issue_ns) / 1000000 : -1;
    m->last_op = c->coll_seq ? c->last_coll_op : -1;
    m->in_wait = c->in_wait > 0;
    m->broken = c->err;
    m->closing = c->closing;
    if (c->err) snprintf(m->why, sizeof m->why, "%.500s", c->errbuf);
}

static void hb_got(dc_comm *c, int rank, const dc_hb_msg *m)
{
    pthread_mutex_lock(&c->mu);
    c->peer_hb[rank] = *m;
    c->peer_hb[rank].why[sizeof m->why - 1] = '\0';
    c->peer_heard_ns[rank] = dc_comm_now_ns();
    pthread_mutex_unlock(&c->mu);
}

/* What a rank does, from its heartbeat: "waiting in all_reduce #42", "in no collective (last
 * issued all_reduce #41)". */
static void state_phrase(const dc_hb_msg *m, char *buf, size_t n)
{
    if (m->pending_seq >= 0) {
        if (m->pending_op == DC_COLL_SEND || m->pending_op == DC_COLL_RECV)
            snprintf(buf, n, "waiting in %s #%lld (peer %d)", dc_coll_op_name((dc_coll_op)m->pending_op),
                     (long long)m->pending_seq, m->pending_peer);
        else
            snprintf(buf, n, "waiting in %s #%lld", dc_coll_op_name((dc_coll_op)m->pending_op),
                     (long long)m->pending_seq);
    } else if (m->issued > 0) {
        snprintf(buf, n, "in no collective (last issued %s #%lld)", dc_coll_op_name((dc_coll_op)m->last_op),
                 (long long)m->issued - 1);
    } else {
        snprintf(buf, n, "in no collective (issued none yet)");
    }
}

/* The timeout message for this rank's oldest unfinished work w (caller holds c->mu). */
static void timeout_message(dc_comm *c, dc_work *w, int64_t now, char *msg, size_t n)
{
    char who_[96], d[160], who2[96];
    dc_hb_msg *st = calloc((size_t)c->size, sizeof *st);
    if (!st) {
        snprintf(msg, n, "%s: %s did not finish within %g s", WHO, dc_comm_describe(&w->fp, d, sizeof d), c->timeout_s);
        return;
    }
    for (int r = 0; r < c->size; r++) st[r] = c->peer_hb[r];
    hb_fill_locked(c, &st[c->rank], now);
    int is_p2p = w->op == DC_COLL_SEND || w->op == DC_COLL_RECV;
    size_t len;
    if (is_p2p)
        len = (size_t)snprintf(msg, n, "%s: collective timeout: %s #%lld (peer %d, tag %d) did not finish within %g s",
                               WHO, dc_coll_op_name(w->op), (long long)w->seq, w->root, w->tag, c->timeout_s);
    else
        len = (size_t)snprintf(msg, n, "%s: collective timeout: %s did not finish within %g s", WHO,
                               dc_comm_describe(&w->fp, d, sizeof d), c->timeout_s);
    /* lagging: the ranks that never issued this collective */
    int nlag = 0;
    if (!is_p2p) {
        for (int r = 0; r < c->size && len < n; r++) {
            if (st[r].issued > w->seq) continue;
            char ph[160];
            state_phrase(&st[r], ph, sizeof ph);
            int64_t age = c->peer_heard_ns[r] ? (now - c->peer_heard_ns[r]) / 1000000 : -1;
            len += (size_t)snprintf(msg + len, n - len, "%s %s is %s",
                                    nlag ? ";" : "; lagging:", dc_comm_who_pid(c, r, who2, sizeof who2), ph);
            if (!st[r].in_wait && st[r].idle_ms >= 0 && len < n)
                len += (size_t)snprintf(msg + len, n - len, ", its caller busy elsewhere for %.1f s",
                                        st[r].idle_ms * 1e-3);
            if (age > 3000 && r != c->rank && len < n)
                len += (size_t)snprintf(msg + len, n - len, " (status %.1f s old)", age * 1e-3);
            nlag++;
        }
    }
    /* everyone else, grouped by what they wait in */
    int *done = calloc((size_t)c->size, sizeof *done);
    for (int r = 0; r < c->size && done && len < n; r++) {
        if (done[r] || (!is_p2p && st[r].issued <= w->seq)) continue;
        char ph[160], ranks[256];
        state_phrase(&st[r], ph, sizeof ph);
        size_t rl = (size_t)snprintf(ranks, sizeof ranks, "%d", r);
        int nr = 1;
        done[r] = 1;
        for (int q = r + 1; q < c->size; q++) {
            if (done[q] || (!is_p2p && st[q].issued <= w->seq)) continue;
            char ph2[160];
            state_phrase(&st[q], ph2, sizeof ph2);
            if (strcmp(ph, ph2)) continue;
            done[q] = 1;
            nr++;
            if (rl < sizeof ranks - 16) rl += (size_t)snprintf(ranks + rl, sizeof ranks - rl, ",%d", q);
        }
        len += (size_t)snprintf(msg + len, n - len, "; %s %s %s %s", nr > 1 ? "ranks" : "rank", ranks,
                                nr > 1 ? "are" : "is", ph);
    }
    if (!is_p2p && nlag == 0 && len < n)
        snprintf(msg + len, n - len,
                 " (every rank issued it, but the transport did not complete it: a stuck peer or the network)");
    free(done);
    free(st);
}

/* 1 when the process of `rank` (on this machine) is gone or a zombie. */
static int local_pid_dead(dc_comm *c, int rank)
{
    pid_t pid = c->peers[rank].pid;
    if (kill(pid, 0) < 0 && errno == ESRCH) return 1;
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t k = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[k] = '\0';
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X');
}

void *dc_comm_watchdog_main(void *arg)
{
    dc_comm *c = arg;
    const char *me_machine = c->peers[c->rank].machine;
    int64_t last_send = 0, last_live = 0;
    int last_broken = 0, last_closing = 0;
    dc_hb_msg mine;
    char msg[DC_COMM_ERRMAX], who_[96], who2[96];
    pthread_mutex_lock(&c->mu);
    while (!c->stop) {
        int64_t now = dc_comm_now_ns();
        /* 1. tell the others where we are */
        if (now - last_send >= (int64_t)(c->hb_period_s * 1e9) || (int)c->err != last_broken ||
            c->closing != last_closing) {
            hb_fill_locked(c, &mine, now);
            last_broken = c->err;
            last_closing = c->closing;
            last_send = now;
            pthread_mutex_unlock(&c->mu);
            dc_ctl_hb_send(c, &mine);
            pthread_mutex_lock(&c->mu);
        }
        pthread_mutex_unlock(&c->mu);
        dc_ctl_hb_poll(c, hb_got);
        pthread_mutex_lock(&c->mu);
        now = dc_comm_now_ns();
        /* 2. a peer failed: so do we, with its message */
        for (int r = 0; r < c->size && !c->err; r++) {
            if (r == c->rank || !c->peer_hb[r].broken) continue;
            snprintf(msg, sizeof msg, "%s: the communicator failed on %s: %s", WHO,
                     dc_comm_who(c, r, who2, sizeof who2), c->peer_hb[r].why);
            dc_comm_break_locked(c, (dc_status)c->peer_hb[r].broken, msg);
        }
        /* 3. dead peers (once per second) */
        if (!c->err && !c->closing && now - last_live >= 1000000000) {
            last_live = now;
            for (int r = 0; r < c->size; r++) {
                if (r == c->rank || c->peer_hb[r].closing) continue;
                int dead = 0;
                const char *how = "";
                if (!strcmp(c->peers[r].machine, me_machine)) {
                    dead = local_pid_dead(c, r);
                    how = "its process is gone";
                } else if (c->peer_heard_ns[r] && (now - c->peer_heard_ns[r]) * 1e-9 > c->dead_after_s) {
                    dead = 1;
                    how = "no heartbeat";
                }
                if (!dead) continue;
                dc_hb_msg self;
                hb_fill_locked(c, &self, now);
                char ph[160];
                state_phrase(&self, ph, sizeof ph);
                snprintf(msg, sizeof msg, "%s: peer %s died (%s) while this rank is %s", WHO,
                         dc_comm_who_pid(c, r, who2, sizeof who2), how, ph);
                c->peer_dead[r] = 1;
                dc_comm_break_locked(c, DC_ERR_COMM, msg);
                fprintf(stderr, "dutycycle: %s\n", msg); /* the job may be killed before a caller sees it */
                fflush(stderr);
                break;
            }
        }
        /* 4. the timeout: this rank's oldest unfinished operation */
        if (!c->err && c->timeout_s > 0) {
            for (dc_work *w = c->head; w; w = w->next) {
                if (w->done) continue;
                if ((now - w->t_enq) * 1e-9 > c->timeout_s) {
                    timeout_message(c, w, now, msg, sizeof msg);
                    dc_comm_break_locked(c, DC_ERR_TIMEOUT, msg);
                    fprintf(stderr, "dutycycle: %s\n", msg);
                    fflush(stderr);
                }
                break;
            }
        }
        struct timespec dl;
        dc_comm_abs_deadline(&dl, 0.05);
        pthread_cond_timedwait(&c->cv_done, &c->mu, &dl);
    }
    pthread_mutex_unlock(&c->mu);
    dc_ctl_hb_stop(c);
    return NULL;
}
