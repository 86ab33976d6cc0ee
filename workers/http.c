/* herald http worker (stub until its issue lands). */
#include "worker.h"
#include "workers.h"

int
http_main(struct worker *w)
{
	return worker_loop(w);
}
