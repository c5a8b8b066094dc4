/*
 * The tick watchdog thread (see tick_wake.h).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "logging.h"
#include "tick_wake.h"

struct tick_wake {
	pthread_t thread;
	pthread_t main_thread;
	int64_t overdue_ms;
	_Atomic int64_t last_tick_ms;
	_Atomic uint64_t wakes;
	pthread_mutex_t lock;
	pthread_cond_t stop_cond;     /* CLOCK_MONOTONIC */
	bool stopping;
	bool watchdog;                /* the thread runs (overdue_ms > 0) */
};

static int wake_signal;           /* chosen once per process, never given back */
static const char *wake_signal_error;
static pthread_once_t wake_signal_once = PTHREAD_ONCE_INIT;


/* Interrupting epoll_wait() is all it is for. */
static void wake_signal_handler(int sig)
{
	(void)sig;
}


/* A real-time signal nobody handles yet (Mosquitto uses SIGRTMIN for log
 * rotation). SA_RESTART: other blocking calls of the main thread resume;
 * epoll_wait() never does, which is the point. The handler stays installed
 * after cleanup (the plugin is never unmapped: -z nodelete), so a late
 * signal cannot kill the broker. */
static void wake_signal_choose(void)
{
	struct sigaction current, ours;
	int sig;

	memset(&ours, 0, sizeof(ours));
	ours.sa_handler = wake_signal_handler;
	ours.sa_flags = SA_RESTART;
	sigemptyset(&ours.sa_mask);
	for(sig = SIGRTMAX; sig > SIGRTMIN; sig--){
		if(sigaction(sig, NULL, &current) != 0){
			continue;
		}
		if(!(current.sa_flags & SA_SIGINFO) && current.sa_handler == SIG_DFL){
			if(sigaction(sig, &ours, NULL) == 0){
				wake_signal = sig;
				return;
			}
		}
	}
	wake_signal_error = "no free real-time signal to wake the broker with";
}


static void deadline_after_ms(struct timespec *ts, int64_t ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += (time_t)(ms / 1000);
	ts->tv_nsec += (long)((ms % 1000) * 1000000);
	if(ts->tv_nsec >= 1000000000L){
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}


static void *tick_wake_run(void *arg)
{
	struct tick_wake *wake = arg;
	struct timespec deadline;
	int64_t check_every = wake->overdue_ms / 2 > 0 ? wake->overdue_ms / 2 : 1;

	pthread_mutex_lock(&wake->lock);
	while(!wake->stopping){
		deadline_after_ms(&deadline, check_every);
		while(!wake->stopping && pthread_cond_timedwait(&wake->stop_cond, &wake->lock, &deadline) != ETIMEDOUT){
		}
		if(wake->stopping){
			break;
		}
		if(monotonic_ms() - atomic_load(&wake->last_tick_ms) >= wake->overdue_ms){
			if(pthread_kill(wake->main_thread, wake_signal) == 0){
				atomic_fetch_add(&wake->wakes, 1);
			}
		}
	}
	pthread_mutex_unlock(&wake->lock);
	return NULL;
}


struct tick_wake *tick_wake_start(int64_t overdue_ms, const char **errmsg)
{
	struct tick_wake *wake;
	pthread_condattr_t attr;

	pthread_once(&wake_signal_once, wake_signal_choose);
	if(wake_signal == 0){
		*errmsg = wake_signal_error;
		return NULL;
	}
	wake = calloc(1, sizeof(*wake));
	if(wake == NULL){
		*errmsg = "out of memory";
		return NULL;
	}
	wake->main_thread = pthread_self();
	wake->overdue_ms = overdue_ms;
	atomic_store(&wake->last_tick_ms, monotonic_ms());
	pthread_mutex_init(&wake->lock, NULL);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&wake->stop_cond, &attr);
	pthread_condattr_destroy(&attr);
	wake->watchdog = overdue_ms > 0;
	if(wake->watchdog && pthread_create(&wake->thread, NULL, tick_wake_run, wake) != 0){
		pthread_cond_destroy(&wake->stop_cond);
		pthread_mutex_destroy(&wake->lock);
		free(wake);
		*errmsg = "cannot start the tick watchdog thread";
		return NULL;
	}
	return wake;
}


void tick_wake_ticked(struct tick_wake *wake, int64_t now_ms)
{
	if(wake != NULL){
		atomic_store(&wake->last_tick_ms, now_ms);
	}
}


void tick_wake_now(struct tick_wake *wake)
{
	if(wake != NULL && pthread_kill(wake->main_thread, wake_signal) == 0){
		atomic_fetch_add(&wake->wakes, 1);
	}
}


uint64_t tick_wake_count(const struct tick_wake *wake)
{
	return wake != NULL ? atomic_load(&wake->wakes) : 0;
}


void tick_wake_stop(struct tick_wake *wake)
{
	if(wake == NULL){
		return;
	}
	pthread_mutex_lock(&wake->lock);
	wake->stopping = true;
	pthread_cond_signal(&wake->stop_cond);
	pthread_mutex_unlock(&wake->lock);
	if(wake->watchdog){
		pthread_join(wake->thread, NULL);
	}
	pthread_cond_destroy(&wake->stop_cond);
	pthread_mutex_destroy(&wake->lock);
	free(wake);
}
