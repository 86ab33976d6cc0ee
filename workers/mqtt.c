/* herald mqtt worker (stub until its issue lands). */
#include "worker.h"
#include "workers.h"

int
mqtt_main(struct worker *w)
{
	return worker_loop(w);
}
