/* stub: replaced by the table-driven parser */
#include <string.h>
#include "config.h"
void config_defaults(struct config *cf) { memset(cf, 0, sizeof(*cf)); }
int config_load(struct config *cf, const char *path, char *err, size_t errlen) { (void)cf; (void)path; (void)err; (void)errlen; return -1; }
int config_parse(struct config *cf, const char *path, const char *text, char *err, size_t errlen) { (void)cf; (void)path; (void)text; (void)err; (void)errlen; return -1; }
int config_validate(const struct config *cf, char *err, size_t errlen) { (void)cf; (void)err; (void)errlen; return 0; }
